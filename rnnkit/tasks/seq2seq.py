"""Sequence to sequence end to end: TSV pairs to a trained run, and a run to translations, scores and heatmaps.

What is here: the batch source for pairs, `train`, `load`, `translate` (greedy or beam search, length
limit relative to the source, `<unk>` replaced by the most attended source token), `evaluate` (BLEU and
chrF through sacrebleu, exact match, token error rate), `predict` (one output line per input line, with
attention heatmaps on request), and `target_units` (the tokens the token error rate counts). What is not:
the network (models/seq2seq.py), attention (attention.py), the loop (train.py), the search algorithms
(decoding.py), the metrics (metrics.py) and the heatmaps' drawing (viz.py).
"""

from __future__ import annotations

import random
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from rnnkit import decoding, distributed, metrics, viz
from rnnkit.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    load_weights,
    read_run_config,
    versions,
)
from rnnkit.config import RunConfig, UserError
from rnnkit.data import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    BucketedSource,
    Tokenizer,
    bucket_batches,
    build_tokenizer,
    load_tokenizer,
    pad_sequences,
)
from rnnkit.data.pairs import Pair, read_pairs, read_sources
from rnnkit.device import resolve_device
from rnnkit.evaluation import evaluate_model
from rnnkit.io import atomic_write_text, write_json
from rnnkit.models.seq2seq import IGNORE_INDEX, Seq2Seq
from rnnkit.train import Trainer, open_run

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


# ------------------------------------------------------------------------------------- training


def _fit_tokenizer(kind: str, texts: list[str], cfg: RunConfig) -> Tokenizer:
    options: dict[str, Any] = {}
    if kind in ("word", "space"):
        options = {"min_freq": cfg.data.min_freq, "max_vocab": cfg.data.max_vocab}
    elif kind == "bpe":
        options = {"vocab_size": cfg.data.vocab_size}
    return build_tokenizer(kind, "\n".join(texts), **options)


def build_model(cfg: RunConfig, source_vocab_size: int, target_vocab_size: int) -> Seq2Seq:
    m, o = cfg.model, cfg.options
    if m.tie_weights:
        raise UserError("--tie-weights: a language-model option; drop it for seq2seq")
    if m.embeddings:
        raise UserError("--embeddings: seq2seq runs do not read pre-trained vectors yet; drop the option")
    cutoffs = m.cutoffs()
    if cutoffs and cutoffs[-1] >= target_vocab_size:
        raise UserError(f"--adaptive-softmax {m.adaptive_softmax}: every cutoff must be below the target "
                        f"vocabulary size {target_vocab_size}")
    return Seq2Seq(source_vocab_size, target_vocab_size, m.embedding_size, m.hidden_size, m.num_layers, m.cell,
                   m.bidirectional, o.attention, m.dropout, m.embedding_dropout, m.output_dropout,
                   o.scheduled_sampling, BOS_ID, m.fused, cutoffs or None)


def _encode_pairs(pairs: Sequence[Pair], source: Tokenizer, target: Tokenizer) -> list[tuple[list[int], list[int]]]:
    return [(_source_ids(source, p.source), target.encode(p.target)) for p in pairs]


def train(
    cfg: RunConfig,
    train_path: str | Path,
    out: str | Path,
    valid_path: str | Path | None = None,
    test_path: str | Path | None = None,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train an encoder-decoder on TSV pairs and write its run directory; returns the final figures."""
    cfg, out, say = open_run(cfg, out, resume, log)
    o, tc = cfg.options, cfg.train
    if o.shared_vocab and o.source_tokenizer != o.target_tokenizer:
        raise UserError(f"--shared-vocab needs one tokenizer for both sides; got --source-tokenizer "
                        f"{o.source_tokenizer} and --target-tokenizer {o.target_tokenizer}")

    pairs = read_pairs(train_path)
    if valid_path is not None:
        valid_pairs = read_pairs(valid_path)
    else:
        held = max(1, round(len(pairs) * cfg.data.valid_fraction))
        if held >= len(pairs):
            raise UserError(f"{train_path}: {len(pairs)} pair(s) cannot spare a validation part; give --valid")
        # A random part, not the last lines: pair corpora are often sorted (Tatoeba by length).
        chosen = set(random.Random(tc.seed).sample(range(len(pairs)), held))
        valid_pairs = [p for i, p in enumerate(pairs) if i in chosen]
        pairs = [p for i, p in enumerate(pairs) if i not in chosen]
        say(f"no --valid given: holding out {held} random pairs of {train_path} (seed {tc.seed}) for validation")

    if resume:
        source_tok, target_tok = load_tokenizer(out / SOURCE_DIR), load_tokenizer(out / TARGET_DIR)
    elif o.shared_vocab:
        source_tok = target_tok = _fit_tokenizer(o.source_tokenizer, [t for p in pairs for t in (p.source, p.target)],
                                                 cfg)
    else:
        source_tok = _fit_tokenizer(o.source_tokenizer, [p.source for p in pairs], cfg)
        target_tok = _fit_tokenizer(o.target_tokenizer, [p.target for p in pairs], cfg)

    encoded = _encode_pairs(pairs, source_tok, target_tok)
    # The source carries <eos>: --max-length counts the tokens of the text itself on either side.
    kept = [e for e in encoded if len(e[0]) - 1 <= o.max_length and len(e[1]) <= o.max_length]
    dropped = len(encoded) - len(kept)
    if not kept:
        raise UserError(f"{train_path}: every one of the {len(encoded)} pairs is longer than --max-length "
                        f"{o.max_length} tokens on a side; raise --max-length")
    say(f"{train_path}: {len(kept)} training pairs, {dropped} dropped as longer than --max-length {o.max_length}")
    train_src = PairSource(kept, tc.batch_size, shuffle=True, seed=tc.seed)
    valid_src = PairSource(_encode_pairs(valid_pairs, source_tok, target_tok), tc.batch_size, shuffle=False,
                           seed=tc.seed)

    model = build_model(cfg, source_tok.vocab_size, target_tok.vocab_size)
    if not resume and distributed.is_main():  # under torchrun, rank 0 writes the run's files
        out.mkdir(parents=True, exist_ok=True)
        source_tok.save(out / SOURCE_DIR)
        target_tok.save(out / TARGET_DIR)
        write_json(out / CONFIG_FILE, {
            **cfg.to_dict(), "source_vocab_size": source_tok.vocab_size, "target_vocab_size": target_tok.vocab_size,
            "max_source_length": max(len(s) - 1 for s, _ in kept), "pairs_dropped": dropped,
            "versions": versions()})
    n_params = sum(p.numel() for p in model.parameters())
    say(f"seq2seq: {cfg.model.cell} {cfg.model.num_layers}x{cfg.model.hidden_size}"
        f"{' bidirectional' if cfg.model.bidirectional else ''}, attention {o.attention}, vocabularies "
        f"{source_tok.kind} {source_tok.vocab_size} -> {target_tok.kind} {target_tok.vocab_size}, "
        f"{n_params:,} parameters; {len(train_src)} batches per epoch")

    trainer = Trainer(model, train_src, valid_src, tc, out, log=log)
    state = trainer.run(resume)
    result: dict[str, Any] = {**trainer.summary(), "best_valid_loss": state.best, "pairs_dropped": dropped}
    if test_path is not None and trainer.main:
        result["test"] = evaluate(out, test_path)
        say("test: " + " ".join(f"{k} {v:.4f}" for k, v in result["test"].items()))
    return result


# ------------------------------------------------------------------------------------ loading


@dataclass
class LoadedSeq2Seq:
    """A trained encoder-decoder with its two tokenizers, ready to translate."""

    model: Seq2Seq
    source_tokenizer: Tokenizer
    target_tokenizer: Tokenizer
    config: RunConfig
    max_source_length: int | None
    device: torch.device


def load(run_dir: str | Path, device: str = "cpu") -> LoadedSeq2Seq:
    """Load a seq2seq run (config, tokenizers, best weights) after checking it."""
    run_dir = Path(run_dir)
    meta = read_run_config(run_dir, task="seq2seq")
    cfg = RunConfig.from_dict({k: v for k, v in meta.items() if k in ("task", "model", "data", "train", "seq2seq")},
                              str(run_dir / CONFIG_FILE))
    source_tok, target_tok = load_tokenizer(run_dir / SOURCE_DIR), load_tokenizer(run_dir / TARGET_DIR)
    for side, tok in (("source", source_tok), ("target", target_tok)):
        expected = meta.get(f"{side}_vocab_size")
        if expected not in (None, tok.vocab_size):
            raise UserError(f"{run_dir}: the {side} tokenizer has {tok.vocab_size} tokens, config says {expected}")
    model = build_model(cfg, source_tok.vocab_size, target_tok.vocab_size)
    load_weights(run_dir / MODEL_FILE, model)
    dev = resolve_device(device)
    model.to(dev).eval()
    return LoadedSeq2Seq(model, source_tok, target_tok, cfg, meta.get("max_source_length"), dev)


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


# ------------------------------------------------------------------------------- entry points


def evaluate(run_dir: str | Path | LoadedSeq2Seq, data_path: str | Path, beam: int | None = None) -> dict[str, float]:
    """BLEU, chrF, exact match and token error rate of the run's translations of a TSV file, and its loss."""
    loaded = run_dir if isinstance(run_dir, LoadedSeq2Seq) else load(run_dir)
    pairs = read_pairs(data_path)
    outputs = translate(loaded, [p.source for p in pairs], beam=beam or 1)
    figures = metrics.text_metrics([t.text for t in outputs], [p.target for p in pairs],
                                   partial(target_units, loaded.target_tokenizer))
    encoded = _encode_pairs(pairs, loaded.source_tokenizer, loaded.target_tokenizer)
    teacher_forced = evaluate_model(loaded.model, PairSource(encoded, DECODE_BATCH, False, 0), loaded.device)
    figures.update(loss=teacher_forced["loss"], perplexity=teacher_forced["perplexity"], pairs=float(len(pairs)))
    return figures


def plot_attention(translation: Translation, path: str | Path, title: str | None = None) -> Path:
    """Write a heatmap of where each output token looked in the source (PNG; see `viz.plot_attention`)."""
    if translation.attention is None:
        raise ValueError("the translation carries no attention weights")
    return viz.plot_attention(translation.attention, translation.source_units, translation.target_units, path,
                              title)


def predict(
    run_dir: str | Path,
    input_path: str | Path,
    output_path: str | Path,
    beam: int | None = None,
    attention_plot: str | Path | None = None,
) -> list[str]:
    """Translate each input line into one output line; blank lines stay blank.

    With `attention_plot`, writes DIR/attention-NNNN.png for input line NNNN (1-based).
    """
    loaded = load(run_dir)
    if attention_plot is not None and loaded.model.attention is None:
        raise UserError(f"--attention-plot: {run_dir} was trained with --attention none; there are no weights "
                        "to plot")
    if str(input_path) == "-":
        text = sys.stdin.read()
    else:
        path = Path(input_path)
        if not path.is_file():
            raise UserError(f"--input {path}: no such file (expected one source text per line)")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"--input {path}: invalid UTF-8 at byte offset {e.start}; expected UTF-8 text") from None
    sources = read_sources(text)
    positions = [i for i, s in enumerate(sources) if s]
    longest = loaded.max_source_length
    for i in positions:
        n = len(loaded.source_tokenizer.encode(sources[i]))
        if longest is not None and n > longest:
            warnings.warn(f"input line {i + 1} has {n} source tokens, more than any training source ({longest}); "
                          "translating it anyway", stacklevel=2)
    done = translate(loaded, [sources[i] for i in positions], beam=beam or 1, attention=attention_plot is not None)
    lines = [""] * len(sources)
    for i, t in zip(positions, done, strict=True):
        lines[i] = t.text
    if attention_plot is not None:
        folder = Path(attention_plot)
        folder.mkdir(parents=True, exist_ok=True)
        for i, t in zip(positions, done, strict=True):
            plot_attention(t, folder / f"attention-{i + 1:04d}.png", title=f"{sources[i]}  ->  {t.text}")
    body = "".join(line + "\n" for line in lines)
    if str(output_path) == "-":
        sys.stdout.write(body)
        sys.stdout.flush()
    else:
        atomic_write_text(output_path, body)
    return lines
