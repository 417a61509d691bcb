"""Sequence to sequence end to end: TSV pairs to a trained run, and a run to translations, scores and heatmaps.

What is here: the batch source for pairs, the `seq2seq` task (reading pairs, a random validation part, the two
tokenizers it keeps, BLEU and chrF through sacrebleu, exact match, token error rate, `predict` with attention
heatmaps on request, the service's answers, the exported encoder and decoder step, attention maps under
`inspect`), `translate` (greedy or beam search, length limit relative to the source, `<unk>` replaced by the
most attended source token) and `target_units` (the tokens the token error rate counts). What is not: the
network (models/seq2seq.py), attention (attention.py), the runner that trains and loads runs (training.py,
runner.py), the search algorithms (decoding.py), the metrics (metrics.py) and the heatmaps' drawing (viz.py).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from rnnkit import decoding, metrics, viz
from rnnkit.config import RunConfig, UserError
from rnnkit.data import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    BucketedSource,
    Tokenizer,
    bucket_batches,
    load_tokenizer,
    pad_sequences,
)
from rnnkit.data.pairs import Pair, read_pairs, read_sources
from rnnkit.data.split import hold_out
from rnnkit.evaluation import evaluate_model
from rnnkit.io import write_output
from rnnkit.models.seq2seq import IGNORE_INDEX, Seq2Seq, Seq2SeqState
from rnnkit.tasks.base import (
    GraphModule,
    LoadedRun,
    Prepared,
    Say,
    Task,
    check_size,
    extend_tokenizer,
    fit_tokenizer,
    initialise_from_lm,
    load_source_lm,
    source_record,
    text_inputs,
)

if TYPE_CHECKING:
    from rnnkit.serve.config import ServeConfig

SOURCE_DIR, TARGET_DIR = "source", "target"  # where the run directory keeps each side's tokenizer
DECODE_BATCH = 64  # sources translated together


# ------------------------------------------------------------------------------------ batches


def _source_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    """Source token ids with `<eos>` closing them, so even an empty source has one position."""
    return [*tokenizer.encode(text), EOS_ID]


class PairSource(BucketedSource):
    """Padded (source, target) batches of similar length, each pair decoded from a fresh state."""

    def __init__(self, pairs: list[tuple[list[int], list[int]]], batch_size: int, shuffle: bool, seed: int) -> None:
        self.pairs = pairs
        super().__init__([max(len(s), len(t) + 1) for s, t in pairs], batch_size, shuffle, seed)

    def batches(self, epoch: int, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        for index in self.order(epoch)[start:]:
            source, source_lengths = pad_sequences([self.pairs[i][0] for i in index], PAD_ID)
            target_inputs, _ = pad_sequences([[BOS_ID, *self.pairs[i][1]] for i in index], PAD_ID)
            targets, _ = pad_sequences([[*self.pairs[i][1], EOS_ID] for i in index], IGNORE_INDEX)
            yield {"source": source, "source_lengths": source_lengths, "target_inputs": target_inputs,
                   "targets": targets}


def _encode_pairs(pairs: Sequence[Pair], source: Tokenizer, target: Tokenizer) -> list[tuple[list[int], list[int]]]:
    return [(_source_ids(source, p.source), target.encode(p.target)) for p in pairs]


def build_model(cfg: RunConfig, source_vocab_size: int, target_vocab_size: int) -> Seq2Seq:
    m, o = cfg.model, cfg.options
    if m.tie_weights:
        raise UserError("--tie-weights: a language-model option; drop it for seq2seq")
    if m.embeddings:
        raise UserError("--embeddings: seq2seq runs do not read pre-trained vectors yet; drop the option")
    cutoffs = m.cutoffs_below(target_vocab_size, "target vocabulary")
    return Seq2Seq(source_vocab_size, target_vocab_size, m.embedding_size, m.hidden_size, m.num_layers, m.cell,
                   m.bidirectional, o.attention, m.dropout, m.embedding_dropout, m.output_dropout,
                   o.scheduled_sampling, BOS_ID, m.fused, cutoffs or None)


# ------------------------------------------------------------------------------------ the task


@dataclass
class LoadedSeq2Seq(LoadedRun):
    """A trained encoder-decoder with its two tokenizers, ready to translate."""

    source_tokenizer: Tokenizer
    target_tokenizer: Tokenizer
    max_source_length: int | None  # the longest training source in tokens (inputs past it are warned about)


class Seq2SeqTask(Task):
    """Source text in, target text out: translation and other pairs."""

    name = "seq2seq"
    summary = "encoder-decoder with attention: translation and other pairs (TSV source<TAB>target)"
    loaded_type = LoadedSeq2Seq

    def prepare(self, cfg: RunConfig, train_path: str | Path, valid_path: str | Path | None, out: Path,
                resume: bool, say: Say) -> Prepared:
        o, tc = cfg.options, cfg.train
        if o.shared_vocab and o.source_tokenizer != o.target_tokenizer:
            raise UserError(f"--shared-vocab needs one tokenizer for both sides; got --source-tokenizer "
                            f"{o.source_tokenizer} and --target-tokenizer {o.target_tokenizer}")
        pairs: Sequence[Pair] = read_pairs(train_path)
        if valid_path is not None:
            valid_pairs = read_pairs(valid_path)
        else:
            # A random part, not the last lines: pair corpora are often sorted (Tatoeba by length).
            pairs, valid_pairs = hold_out(pairs, cfg.data.valid_fraction, "random", seed=tc.seed,
                                          source=str(train_path), unit="pairs")
            say(f"no --valid given: holding out {len(valid_pairs)} random pairs of {train_path} (seed {tc.seed}) "
                "for validation")

        state: dict[str, Any] = {}
        meta: dict[str, Any] = {}
        if resume:
            source_tok, target_tok = load_tokenizer(out / SOURCE_DIR), load_tokenizer(out / TARGET_DIR)
        elif o.init_from:
            if o.shared_vocab:
                raise UserError("--init-from starts the encoder with the language model's vocabulary; drop "
                                "--shared-vocab")
            lm = state["lm"] = load_source_lm(cfg, o.init_from, "seq2seq", say, one_direction=False)
            plain = RunConfig.create("seq2seq").options.source_tokenizer
            if o.source_tokenizer not in (plain, lm.tokenizer.kind):
                raise UserError(f"--init-from {o.init_from}: --source-tokenizer {o.source_tokenizer} differs from "
                                f"the language model's {lm.tokenizer.kind}; drop --source-tokenizer")
            o.source_tokenizer = lm.tokenizer.kind
            source_tok = extend_tokenizer(lm.tokenizer, [p.source for p in pairs], cfg.data.min_freq)
            target_tok = fit_tokenizer(o.target_tokenizer, [p.target for p in pairs], cfg)
            meta["init_from"] = source_record(o.init_from)
        elif o.shared_vocab:
            source_tok = target_tok = fit_tokenizer(o.source_tokenizer,
                                                    [t for p in pairs for t in (p.source, p.target)], cfg)
        else:
            source_tok = fit_tokenizer(o.source_tokenizer, [p.source for p in pairs], cfg)
            target_tok = fit_tokenizer(o.target_tokenizer, [p.target for p in pairs], cfg)

        encoded = _encode_pairs(pairs, source_tok, target_tok)
        # The source carries <eos>: --max-length counts the tokens of the text itself on either side.
        kept = [e for e in encoded if len(e[0]) - 1 <= o.max_length and len(e[1]) <= o.max_length]
        dropped = len(encoded) - len(kept)
        if not kept:
            raise UserError(f"{train_path}: every one of the {len(encoded)} pairs is longer than --max-length "
                            f"{o.max_length} tokens on a side; raise --max-length")
        say(f"{train_path}: {len(kept)} training pairs, {dropped} dropped as longer than --max-length "
            f"{o.max_length}")
        train_src = PairSource(kept, tc.batch_size, shuffle=True, seed=tc.seed)
        valid_src = PairSource(_encode_pairs(valid_pairs, source_tok, target_tok), tc.batch_size, shuffle=False,
                               seed=tc.seed)
        m = cfg.model
        return Prepared(
            train_src, valid_src, {"source_tokenizer": source_tok, "target_tokenizer": target_tok},
            describe=f"seq2seq: {m.cell} {m.num_layers}x{m.hidden_size}{' bidirectional' if m.bidirectional else ''}"
                     f", attention {o.attention}, vocabularies {source_tok.kind} {source_tok.vocab_size} -> "
                     f"{target_tok.kind} {target_tok.vocab_size}, {{params}} parameters; {len(train_src)} batches "
                     "per epoch",
            meta={"source_vocab_size": source_tok.vocab_size, "target_vocab_size": target_tok.vocab_size,
                  "max_source_length": max(len(s) - 1 for s, _ in kept), "pairs_dropped": dropped, **meta},
            result={"pairs_dropped": dropped}, state=state)

    def initialise(self, model: Seq2Seq, cfg: RunConfig, prepared: Prepared, say: Say) -> None:
        lm = prepared.state.get("lm")
        if lm is not None:
            tok = prepared.assets["source_tokenizer"]
            words = [tok.token_text(i) for i in range(tok.vocab_size)]
            initialise_from_lm(model.source_embedding, model.encoder, words, lm, say,
                               same_ids=lm.tokenizer.vocab_size)

    def build_model(self, cfg: RunConfig, source_tokenizer: Tokenizer, target_tokenizer: Tokenizer) -> Seq2Seq:
        return build_model(cfg, source_tokenizer.vocab_size, target_tokenizer.vocab_size)

    def model_assets(self, assets: dict[str, Any]) -> dict[str, Any]:
        return {k: assets[k] for k in ("source_tokenizer", "target_tokenizer")}

    def save(self, out: Path, prepared: Prepared) -> None:
        prepared.assets["source_tokenizer"].save(out / SOURCE_DIR)
        prepared.assets["target_tokenizer"].save(out / TARGET_DIR)

    def load_assets(self, run_dir: Path, cfg: RunConfig, meta: dict[str, Any]) -> dict[str, Any]:
        assets: dict[str, Any] = {}
        for side, folder in (("source", SOURCE_DIR), ("target", TARGET_DIR)):
            tok = load_tokenizer(run_dir / folder)
            check_size(run_dir, meta, f"{side}_vocab_size", tok.vocab_size,
                       f"the {side} tokenizer has {tok.vocab_size} tokens")
            assets[f"{side}_tokenizer"] = tok
        return {**assets, "max_source_length": meta.get("max_source_length")}

    def evaluate(self, run: LoadedSeq2Seq, data_path: str | Path, beam: int | None = None) -> dict[str, float]:
        """BLEU, chrF, exact match and token error rate of the run's translations of a TSV file, and its loss."""
        pairs = read_pairs(data_path)
        outputs = translate(run, [p.source for p in pairs], beam=beam or 1)
        figures = metrics.text_metrics([t.text for t in outputs], [p.target for p in pairs],
                                       partial(target_units, run.target_tokenizer))
        encoded = _encode_pairs(pairs, run.source_tokenizer, run.target_tokenizer)
        teacher_forced = evaluate_model(run.model, PairSource(encoded, DECODE_BATCH, False, 0), run.device)
        figures.update(loss=teacher_forced["loss"], perplexity=teacher_forced["perplexity"], pairs=float(len(pairs)))
        return figures

    def predict(self, run: LoadedSeq2Seq, input_path: str | Path, output_path: str | Path, beam: int | None = None,
                attention_plot: str | Path | None = None) -> list[str]:
        """Translate each input line into one output line; blank lines stay blank.

        With `attention_plot`, writes DIR/attention-NNNN.png for input line NNNN (1-based).
        """
        if attention_plot is not None and run.model.attention is None:
            raise UserError(f"--attention-plot: {run.run_dir} was trained with --attention none; there are no "
                            "weights to plot")
        if str(input_path) == "-":
            text = sys.stdin.read()
        else:
            path = Path(input_path)
            if not path.is_file():
                raise UserError(f"--input {path}: no such file (expected one source text per line)")
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"--input {path}: invalid UTF-8 at byte offset {e.start}; expected UTF-8 "
                                "text") from None
        sources = read_sources(text)
        positions = [i for i, s in enumerate(sources) if s]
        longest = run.max_source_length
        for i in positions:
            n = len(run.source_tokenizer.encode(sources[i]))
            if longest is not None and n > longest:
                warnings.warn(f"input line {i + 1} has {n} source tokens, more than any training source "
                              f"({longest}); translating it anyway", stacklevel=2)
        done = translate(run, [sources[i] for i in positions], beam=beam or 1, attention=attention_plot is not None)
        lines = [""] * len(sources)
        for i, t in zip(positions, done, strict=True):
            lines[i] = t.text
        if attention_plot is not None:
            folder = Path(attention_plot)
            folder.mkdir(parents=True, exist_ok=True)
            for i, t in zip(positions, done, strict=True):
                plot_attention(t, folder / f"attention-{i + 1:04d}.png", title=f"{sources[i]}  ->  {t.text}")
        write_output(output_path, "".join(line + "\n" for line in lines))
        return lines

    # ------------------------------------------------------------------ serving, export, inspect

    def answer(self, run: LoadedSeq2Seq, inputs: list[Any], config: ServeConfig, beam: int = 1) -> list[dict[str, Any]]:
        """`POST /predict`: each text's translation with its tokens and, up to `config.max_attention_cells`
        cells, its attention map."""
        found = translate(run, text_inputs(inputs, config.max_input_chars), beam=beam, attention=True)
        out = []
        for source, t in zip(inputs, found, strict=True):
            answer: dict[str, Any] = {"input": source, "output": t.text, "source_tokens": t.source_units,
                                      "output_tokens": t.target_units}
            if t.attention is not None and t.attention.numel() <= config.max_attention_cells:
                answer["attention"] = [[round(float(w), 4) for w in row] for row in t.attention.tolist()]
            out.append(answer)
        return out

    def describe_run(self, run: LoadedSeq2Seq) -> dict[str, Any]:
        return {"source_vocab_size": run.source_tokenizer.vocab_size,
                "target_vocab_size": run.target_tokenizer.vocab_size, "attention": run.config.options.attention}

    def export_graphs(self, run: LoadedSeq2Seq) -> list[Any]:
        """An encoder graph and a one-step decoder graph; greedy or beam search runs them step by step."""
        from rnnkit.export import Graph

        model = run.model.eval()
        k = model.decoder.num_states
        rnn_names = ["h", "c"][:k]
        Vs, Vt = run.source_tokenizer.vocab_size, run.target_tokenizer.vocab_size

        def make_source(sizes: dict[str, int]) -> tuple[Tensor, ...]:
            B, S = sizes["B"], sizes["S"]
            lengths = torch.randint(1, S + 1, (B,))
            lengths[0] = S
            return torch.randint(4, Vs, (B, S)), lengths

        def make_step(sizes: dict[str, int]) -> tuple[Tensor, ...]:
            with torch.no_grad():
                state = _EncoderGraph(model)(*make_source(sizes))
            return (torch.randint(4, Vt, (sizes["B"],)), *state)

        state_names = [*rnn_names, "feed", "memory", "keys", "mask"]
        if model.attention is None:  # the fixed context vector: one memory slot whatever the source length
            per_source: dict[int, str] = {0: "B"}
        else:
            per_source = {0: "B", 1: "S"}
        dims_state = {n: {1: "B"} for n in rnn_names} | {"feed": {0: "B"}, "memory": per_source,
                                                         "keys": per_source, "mask": per_source}
        check_sizes = [{"B": 1, "S": 1}, {"B": 4, "S": 15}]
        return [
            Graph("encoder", _EncoderGraph(model), make_source({"B": 3, "S": 7}), ["source", "lengths"], state_names,
                  {"source": {0: "B", 1: "S"}, "lengths": {0: "B"}}, make_source, check_sizes=check_sizes),
            Graph("decoder_step", _DecoderStepGraph(model, k), make_step({"B": 3, "S": 7}), ["tokens", *state_names],
                  ["logits", *[n + "_out" for n in rnn_names], "feed_out"], {"tokens": {0: "B"}, **dims_state},
                  make_step, check_sizes=check_sizes),
        ]

    def encoder_sequences(self, run: LoadedSeq2Seq, data_path: str | Path
                          ) -> tuple[Any, list[Any], Callable[[dict[str, Tensor]], Tensor]]:
        """Each pair of a TSV file as a batch of one; the loss is the target's given the source."""
        from rnnkit.diagnostics import InspectSequence

        encoded = _encode_pairs(read_pairs(data_path), run.source_tokenizer, run.target_tokenizer)
        found = []
        for source, target in encoded:
            batch = next(iter(PairSource([(source, target)], 1, False, 0).batches(0)))
            found.append(InspectSequence(batch, [run.source_tokenizer.token_text(i) for i in source]))

        def loss(batch: dict[str, Tensor]) -> Tensor:
            return run.model.loss(batch).loss

        return run.model.encoder, found, loss

    def inspect(self, run: LoadedSeq2Seq, data_path: str | Path, out: Path, steps: int, rows: int) -> dict[str, Any]:
        """The encoder's gradient flow and activations, and for a run with attention the maps of the first
        `rows` sources."""
        figures = super().inspect(run, data_path, out, steps, rows)
        if run.model.attention is not None:
            maps = attention_maps(run, data_path, out, count=rows)
            figures["attention_maps"] = maps
            figures["files"][-1:-1] = [m["file"] for m in maps]  # before inspect.json, the last
        return figures


TASK = Seq2SeqTask()


class _EncoderGraph(GraphModule):
    """Export: source (B, S), lengths (B,) -> the decoder's first state: rnn parts, feed, memory, keys, mask."""

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        state = self.model.encode(inputs[0], inputs[1])
        rnn = state.rnn if isinstance(state.rnn, tuple) else (state.rnn,)
        keys = state.prepared if state.prepared is not None else state.memory
        return (*rnn, state.feed, state.memory, keys, state.mask)


class _DecoderStepGraph(GraphModule):
    """Export: one decoder step: tokens (B,) and the state -> logits (B, Vt) and the new rnn parts and feed."""

    def __init__(self, model: Seq2Seq, num_states: int) -> None:
        super().__init__(model)
        self.num_states = num_states

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        k = self.num_states
        tokens, rnn, (feed, memory, keys, mask) = inputs[0], inputs[1:1 + k], inputs[1 + k:]
        prepared = keys if self.model.attention is not None else None
        state = Seq2SeqState(rnn if k > 1 else rnn[0], feed, memory, prepared, mask)
        logits, new = self.model.step(tokens, state)
        parts = new.rnn if isinstance(new.rnn, tuple) else (new.rnn,)
        return (logits, *parts, new.feed)


# -------------------------------------------------------------------------------- translating


@dataclass
class Translation:
    """One output: its text, its target token ids (`<eos>` excluded) and, on request, where it looked."""

    text: str
    tokens: list[int]
    source_units: list[str]  # the source's tokens as text, `<eos>` last
    target_units: list[str]  # the output's tokens as text, copies applied, `<eos>` last
    attention: torch.Tensor | None  # (len(target_units), len(source_units)), or None


def _surface_units(tokenizer: Tokenizer, text: str, ids: list[int]) -> list[str]:
    """The text of each token of `text` (one per id), for copying and for plot labels."""
    if tokenizer.kind in ("word", "space"):
        units = tokenizer.split(text)  # type: ignore[attr-defined]
    elif tokenizer.kind == "char":
        units = list(text)
    else:
        units = [tokenizer.token_text(i) for i in ids]
    assert len(units) == len(ids), (len(units), len(ids))
    return units


def _detokenize(tokenizer: Tokenizer, ids: list[int], copies: dict[int, str]) -> str:
    """Target ids to text, with the `<unk>` at position t replaced by copies[t] where given."""
    if not copies:
        return tokenizer.decode(ids)
    if tokenizer.kind == "char":
        return "".join(copies.get(t, tokenizer.decode([i])) for t, i in enumerate(ids))
    if tokenizer.kind in ("word", "space"):
        # `<unk>` decodes to the literal "<unk>" and no other text does: fill them in order.
        pieces = tokenizer.decode(ids).split("<unk>")
        fills = [copies.get(t, "<unk>") for t, i in enumerate(ids) if i == UNK_ID]
        assert len(fills) == len(pieces) - 1
        return "".join(p + f for p, f in zip(pieces, [*fills, ""], strict=True))
    return tokenizer.decode(ids)  # byte-level BPE has no <unk>


def max_output_lengths(source_lengths: torch.Tensor, ratio: float, extra: int) -> torch.Tensor:
    """Most target tokens (`<eos>` included) per row: ceil(ratio * source tokens) + extra."""
    return (source_lengths.double() * ratio).ceil().long() + extra


@torch.no_grad()
def _decode_batch(model: Seq2Seq, source: torch.Tensor, lengths: torch.Tensor, beam: int, max_lens: torch.Tensor,
                  length_penalty: float) -> list[list[int]]:
    logits, state = model.start(source, lengths)
    if beam == 1:
        tokens = decoding.greedy(model, logits, state, int(max_lens.max()), eos_id=EOS_ID).tolist()
        rows = []
        for row, limit in zip(tokens, max_lens.tolist(), strict=True):
            row = row[:limit]
            rows.append(row[: row.index(EOS_ID)] if EOS_ID in row else row)
        return rows
    hyps = decoding.beam_search(model, logits, state, beam, max_lens, eos_id=EOS_ID, length_penalty=length_penalty)
    return [h[0].tokens for h in hyps]


@torch.no_grad()
def translate(
    loaded: LoadedSeq2Seq,
    sources: Sequence[str],
    beam: int = 1,
    attention: bool = False,
    batch_size: int = DECODE_BATCH,
) -> list[Translation]:
    """Translate each source text (greedy for beam 1, else batched beam search).

    Sources are decoded in batches of similar length; the result keeps the input order. Outputs stop at
    `<eos>` or at ceil(max_output_ratio * source tokens) + max_output_extra tokens. With copy_unknown,
    each `<unk>` in an output becomes the source token the decoder attended to most at that step, among
    the source's own unknown tokens when it has any.
    """
    if beam < 1:
        raise UserError(f"--beam: expected an integer >= 1; got {beam}")
    model, o = loaded.model, loaded.config.options
    src_tok, tgt_tok = loaded.source_tokenizer, loaded.target_tokenizer
    ids = [_source_ids(src_tok, s) for s in sources]
    results: list[Translation | None] = [None] * len(sources)
    for index in bucket_batches([len(i) for i in ids], batch_size, shuffle=False):
        source, lengths = pad_sequences([ids[i] for i in index], PAD_ID)
        source, lengths = source.to(loaded.device), lengths.to(loaded.device)
        max_lens = max_output_lengths(lengths - 1, o.max_output_ratio, o.max_output_extra)
        outputs = _decode_batch(model, source, lengths, beam, max_lens.cpu(), o.length_penalty)
        weights = None
        needs_copy = o.copy_unknown and model.attention is not None and any(UNK_ID in t for t in outputs)
        if (attention or needs_copy) and model.attention is not None:
            target_inputs, _ = pad_sequences([[BOS_ID, *t] for t in outputs], PAD_ID)
            _, weights = model(source, lengths, target_inputs.to(loaded.device))  # (b, T, S)
        for row, i in enumerate(index):
            tokens = outputs[row]
            n_src = int(lengths[row])
            units = [*_surface_units(src_tok, sources[i], ids[i][:-1]), "<eos>"]
            w = None if weights is None else weights[row, : len(tokens) + 1, :n_src].cpu()  # (T+1, S)
            copies: dict[int, str] = {}
            if needs_copy and w is not None and n_src > 1:
                # An unknown output word most likely renders an unknown source word: choose among those
                # when there are any, else among all source tokens (the closing <eos> is not a word).
                unknown = [s for s in range(n_src - 1) if ids[i][s] == UNK_ID] or list(range(n_src - 1))
                for t, tok in enumerate(tokens):
                    if tok == UNK_ID:
                        copies[t] = units[max(unknown, key=lambda s: float(w[t, s]))]
            target_units = [copies.get(t, tgt_tok.token_text(tok)) for t, tok in enumerate(tokens)] + ["<eos>"]
            results[i] = Translation(_detokenize(tgt_tok, tokens, copies), tokens, units, target_units,
                                     w if attention else None)
    return [r for r in results if r is not None]


# ------------------------------------------------------------------------------------ metrics


def target_units(tokenizer: Tokenizer, text: str) -> list[str]:
    """The target tokens of a text, as counted by the token error rate."""
    return _surface_units(tokenizer, text, tokenizer.encode(text))


def plot_attention(translation: Translation, path: str | Path, title: str | None = None) -> Path:
    """Write a heatmap of where each output token looked in the source (PNG; see `viz.plot_attention`)."""
    if translation.attention is None:
        raise ValueError("the translation carries no attention weights")
    return viz.plot_attention(translation.attention, translation.source_units, translation.target_units, path,
                              title)



def attention_maps(run: LoadedSeq2Seq, data_path: str | Path, out: str | Path, count: int = 5) -> list[dict[str, str]]:
    """Heatmaps of where the decoder looked, for the first `count` sources of a pairs file, written into `out` as
    attention-N.png; returns per map the source, the output, the reference and the file's name."""
    if run.model.attention is None:
        raise UserError(f"{run.run_dir}: this run has no attention (--attention none); nothing to map")
    pairs = read_pairs(data_path)[:count]
    found = translate(run, [p.source for p in pairs], attention=True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    maps = []
    for i, (pair, t) in enumerate(zip(pairs, found, strict=True)):
        name = f"attention-{i + 1}.png"
        plot_attention(t, out / name, title=f"{pair.source} -> {t.text}")
        maps.append({"source": pair.source, "output": t.text, "reference": pair.target, "file": name})
    return maps
