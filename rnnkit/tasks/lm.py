"""Language modelling: text files to a trained run, and a run to text, completions and figures.

What is here: the batch sources for a token stream (truncated BPTT) and for whole lines (full BPTT), the
`lm` task (reading text, the tokenizer it keeps, scoring by perplexity) and what a language model answers:
`generate` and `complete`. What is not: the network (models/language_model.py), the runner that trains
and loads runs (training.py, runner.py), the search algorithms (decoding.py).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rnnkit import decoding
from rnnkit.config import RunConfig, UserError
from rnnkit.data import (
    BOS_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    BucketedSource,
    StreamBatches,
    Tokenizer,
    load_tokenizer,
    pad_sequences,
    read_text,
)
from rnnkit.data.split import hold_out
from rnnkit.evaluation import evaluate_model
from rnnkit.models.language_model import IGNORE_INDEX, LanguageModel
from rnnkit.tasks.base import (
    STRUCTURE,
    GraphModule,
    LoadedRun,
    Prepared,
    Say,
    Task,
    check_size,
    check_structure,
    fit_tokenizer,
    source_record,
    start_embeddings,
)
from rnnkit.tasks.runner import ensure_loaded

EVAL_ROWS = 10  # rows of the stream when evaluating: long contexts, as is usual for perplexity


class StreamSource:
    """A continuous token stream in (B, bptt) chunks; the state carries from chunk to chunk."""

    stateful = True

    def __init__(self, ids: torch.Tensor, batch_size: int, bptt: int) -> None:
        self.stream = StreamBatches(ids, batch_size, bptt)

    def __len__(self) -> int:
        return len(self.stream)

    def batches(self, epoch: int, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        for inputs, targets in self.stream.iter_from(start):
            yield {"inputs": inputs, "targets": targets}


class LineSource(BucketedSource):
    """Whole lines as padded batches of similar length, each from a zero state (full BPTT)."""

    def __init__(self, sequences: list[list[int]], batch_size: int, shuffle: bool, seed: int) -> None:
        self.sequences = [s for s in sequences if len(s) >= 2]
        if not self.sequences:
            raise UserError("no line has two or more tokens: nothing to learn with full BPTT (--bptt 0)")
        super().__init__([len(s) - 1 for s in self.sequences], batch_size, shuffle, seed)

    def batches(self, epoch: int, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        for index in self.order(epoch)[start:]:
            seqs = [torch.tensor(self.sequences[i]) for i in index]
            inputs, lengths = pad_sequences([s[:-1] for s in seqs], PAD_ID)
            targets, _ = pad_sequences([s[1:] for s in seqs], IGNORE_INDEX)
            yield {"inputs": inputs, "targets": targets, "lengths": lengths}


def _encode(tokenizer: Tokenizer, text: str, reverse: bool = False) -> torch.Tensor:
    """The token ids of a text; `reverse`: in reverse order, the text read from its end (a backward model)."""
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    return ids.flip(0) if reverse else ids


def _eval_source(ids: torch.Tensor, bptt: int, name: str) -> StreamSource:
    """A stream of up to EVAL_ROWS rows over held-out text, shortened to fit short texts."""
    n = ids.numel()
    if n < 2:
        raise UserError(f"{name}: the text has {n} token(s); at least 2 are needed to evaluate")
    bptt = bptt or 100
    rows = max(1, min(EVAL_ROWS, (n - 1) // (bptt + 1)))
    return StreamSource(ids, rows, min(bptt, n // rows - 1))


def _lines(tokenizer: Tokenizer, text: str, reverse: bool = False) -> list[list[int]]:
    """Each non-blank line's ids with its line break; `reverse`: the line's tokens from its end, then the break."""
    if reverse:
        return [tokenizer.encode(line)[::-1] + tokenizer.encode("\n") for line in text.split("\n") if line.strip()]
    return [tokenizer.encode(line + "\n") for line in text.split("\n") if line.strip()]


def is_reversed(cfg: RunConfig) -> bool:
    """Whether a language-model run reads text from its end."""
    return bool(cfg.options is not None and cfg.options.reverse)


def build_model(cfg: RunConfig, vocab_size: int) -> LanguageModel:
    m = cfg.model
    if m.bidirectional:
        raise UserError("--bidirectional: a language model reads left to right; drop the option")
    cutoffs = m.cutoffs_below(vocab_size)
    if cutoffs and m.tie_weights:
        raise UserError("--adaptive-softmax and --tie-weights cannot be combined")
    return LanguageModel(vocab_size, m.embedding_size, m.hidden_size, m.num_layers, m.cell, m.dropout,
                         m.embedding_dropout, m.output_dropout, m.variational, m.tie_weights, m.fused, cutoffs,
                         m.recurrent_options())


@dataclass
class LoadedLM(LoadedRun):
    """A trained language model with its tokenizer, ready to decode."""

    tokenizer: Tokenizer


class LanguageModelTask(Task):
    """Text in, the next token out: generation, autocomplete, perplexity."""

    name = "lm"
    summary = "language model: text generation and autocomplete (UTF-8 text)"
    loaded_type = LoadedLM
    predict_hint = "; use 'rnnkit generate' or 'rnnkit complete'"

    def prepare(self, cfg: RunConfig, train_path: str | Path, valid_path: str | Path | None, out: Path,
                resume: bool, say: Say) -> Prepared:
        if cfg.model.bidirectional:
            raise UserError("--bidirectional: a language model reads left to right; drop the option")
        text = read_text(train_path)
        if valid_path is not None:
            valid_text = read_text(valid_path)
        else:
            text, valid_text = hold_out(text, cfg.data.valid_fraction, "tail", source=str(train_path),
                                        unit="characters")
        o, state, meta = cfg.options, {}, {}
        if resume:
            tokenizer = load_tokenizer(out)
        elif o.init_from:
            source = state["source"] = self._source(cfg, o.init_from, say)
            tokenizer = source.tokenizer
            meta["init_from"] = source_record(o.init_from)
        else:
            tokenizer = fit_tokenizer(cfg.data.tokenizer, [text], cfg)
        tc, reverse = cfg.train, o.reverse
        try:
            if tc.bptt > 0:
                train_src: Any = StreamSource(_encode(tokenizer, text, reverse), tc.batch_size, tc.bptt)
            else:
                train_src = LineSource(_lines(tokenizer, text, reverse), tc.batch_size, shuffle=True, seed=tc.seed)
        except UserError as e:
            raise UserError(f"{train_path}: {e}") from None
        valid_src = _eval_source(_encode(tokenizer, valid_text, reverse), tc.bptt,
                                 str(valid_path or "validation text"))
        if valid_path is None:
            say(f"no --valid given: holding out the last {cfg.data.valid_fraction:.0%} of {train_path} for "
                "validation")
        m = cfg.model
        return Prepared(train_src, valid_src, {"tokenizer": tokenizer},
                        describe=f"language model{' (backward: the text read from its end)' if reverse else ''}: "
                                 f"{m.cell} {m.num_layers}x{m.hidden_size}, {tokenizer.kind} "
                                 f"vocabulary {tokenizer.vocab_size}, {{params}} parameters; {len(train_src)} "
                                 "batches per epoch",
                        meta={"vocab_size": tokenizer.vocab_size, **meta}, state=state)

    @staticmethod
    def _source(cfg: RunConfig, run_dir: str, say: Say) -> LoadedLM:
        """The language-model run to continue: its structure and direction become this run's."""
        from rnnkit.tasks import runner

        source = runner.load(run_dir, task="lm")
        check_structure(cfg, source.config, run_dir, STRUCTURE, RunConfig.create("lm"))
        if is_reversed(source.config) != cfg.options.reverse:
            said = "backward (--reverse)" if is_reversed(source.config) else "forward"
            raise UserError(f"--init-from {run_dir}: that run is a {said} model; "
                            + ("add --reverse" if is_reversed(source.config) else "drop --reverse"))
        cfg.data.tokenizer = source.tokenizer.kind
        say(f"--init-from {run_dir}: continuing its {source.config.model.cell} "
            f"{source.config.model.num_layers}x{source.config.model.hidden_size} on new text, with its "
            f"{source.tokenizer.kind} vocabulary of {source.tokenizer.vocab_size}")
        return source

    def build_model(self, cfg: RunConfig, tokenizer: Tokenizer) -> LanguageModel:
        return build_model(cfg, tokenizer.vocab_size)

    def initialise(self, model: nn.Module, cfg: RunConfig, prepared: Prepared, say: Say) -> None:
        source = prepared.state.get("source")
        if source is not None:
            model.load_state_dict(source.model.state_dict())
            return
        tokenizer = prepared.assets["tokenizer"]
        words = [tokenizer.token_text(i) for i in range(tokenizer.vocab_size)]
        start_embeddings(model.embedding, words, cfg, say, unit="tokens")

    def save(self, out: Path, prepared: Prepared) -> None:
        prepared.assets["tokenizer"].save(out)

    def load_assets(self, run_dir: Path, cfg: RunConfig, meta: dict[str, Any]) -> dict[str, Any]:
        tokenizer = load_tokenizer(run_dir)
        check_size(run_dir, meta, "vocab_size", tokenizer.vocab_size, f"tokenizer has {tokenizer.vocab_size} tokens")
        return {"tokenizer": tokenizer}

    def evaluate(self, run: LoadedLM, data_path: str | Path) -> dict[str, float]:
        """Loss, perplexity and bits per token of a run on a text file (bits per character for char models)."""
        ids = _encode(run.tokenizer, read_text(data_path), is_reversed(run.config))
        figures = evaluate_model(run.model, _eval_source(ids, run.config.train.bptt, str(data_path)), run.device)
        if run.tokenizer.kind == "char":
            figures["bits_per_character"] = figures["bits_per_token"]
        figures["tokens"] = float(ids.numel())
        return figures


    # ------------------------------------------------------------------ serving, export, inspect

    generates_text = True

    def describe_run(self, run: LoadedLM) -> dict[str, Any]:
        return {"vocab_size": run.tokenizer.vocab_size, "tokenizer": run.tokenizer.kind}

    def export_graphs(self, run: LoadedLM) -> list[Any]:
        """The whole sequence with the state in and out, and one step for streaming generation."""
        from rnnkit.export import Graph

        model = run.model.eval()
        rnn = model.rnn
        V, L, H = run.tokenizer.vocab_size, rnn.num_layers, rnn.hidden_size
        names = ["h", "c"][: rnn.num_states]

        def state(B: int) -> tuple[torch.Tensor, ...]:
            return tuple(torch.randn(L, B, H) * 0.5 for _ in names)

        def seq_inputs(sizes: dict[str, int]) -> tuple[torch.Tensor, ...]:
            return (torch.randint(0, V, (sizes["B"], sizes["T"])), *state(sizes["B"]))

        def step_inputs(sizes: dict[str, int]) -> tuple[torch.Tensor, ...]:
            return (torch.randint(0, V, (sizes["B"],)), *state(sizes["B"]))

        state_dims = {n: {1: "B"} for n in names}
        outputs = ["logits", *[n + "_out" for n in names]]
        return [
            Graph("sequence", _SequenceGraph(model), seq_inputs({"B": 3, "T": 7}), ["tokens", *names], outputs,
                  {"tokens": {0: "B", 1: "T"}, **state_dims}, seq_inputs),
            Graph("step", _StepGraph(model), step_inputs({"B": 3}), ["token", *names], outputs,
                  {"token": {0: "B"}, **state_dims}, step_inputs, check_sizes=[{"B": 1}, {"B": 6}]),
        ]

    def inspect(self, run: LoadedLM, data_path: str | Path, out: Path, steps: int, rows: int) -> dict[str, Any]:
        """Gradient flow through the language model's own steps (see diagnostics.inspect_lm)."""
        from rnnkit.diagnostics import inspect_lm

        if steps < 2:
            raise UserError(f"--steps: expected an integer >= 2; got {steps}")
        return inspect_lm(run, data_path, out, steps=steps, rows=rows)


TASK = LanguageModelTask()


class _SequenceGraph(GraphModule):
    """Export: tokens (B, T) and the state parts (L, B, H) -> logits (B, T, V) and the new state parts."""

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        tokens, state = inputs[0], inputs[1:]
        logits, new = self.model(tokens, state if len(state) > 1 else state[0])
        return (logits, *(new if isinstance(new, tuple) else (new,)))


class _StepGraph(_SequenceGraph):
    """Export: token (B,) and the state parts -> logits (B, V) for the next token and the new state parts."""

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        token, state = inputs[0], inputs[1:]
        logits, new = self.model.step(token, state if len(state) > 1 else state[0])
        return (logits, *(new if isinstance(new, tuple) else (new,)))


def _prompt_ids(lm: LoadedLM, prompt: str) -> list[int]:
    unknown = lm.tokenizer.unknown_symbols(prompt)
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:10])
        warnings.warn(f"the prompt holds symbols the model never saw, read as <unk>: {shown}", stacklevel=3)
    ids = lm.tokenizer.encode(prompt)
    if not ids:
        # An empty prompt starts the text as a new line would.
        newline = lm.tokenizer.encode("\n")
        ids = newline if newline and newline[0] >= len(SPECIAL_TOKENS) else [BOS_ID]  # no newline in the corpus
    return ids


def _forward_model(lm: LoadedLM) -> LoadedLM:
    """The run, refused when it reads text backwards: its next token is the one before, not after."""
    if is_reversed(lm.config):
        raise UserError(f"{lm.run_dir}: a backward language model (--reverse) reads text from its end; it gives "
                        "scores ('rnnkit evaluate') and features ('train tag --lm-features'), not continuations")
    return lm


def generate(
    run_dir: str | Path | LoadedLM,
    prompt: str = "",
    max_tokens: int = 200,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    beam: int = 1,
    seed: int | None = None,
    on_text: Callable[[str], None] | None = None,
) -> str:
    """Continue `prompt`: sampling (temperature 0 = greedy) or beam search (`beam` > 1).

    With `on_text`, each new piece of text is passed on as soon as it is made (streaming).
    Returns the generated continuation (without the prompt).
    """
    lm = _forward_model(ensure_loaded(run_dir, "lm"))
    if max_tokens < 1:
        raise UserError(f"--max-tokens: expected an integer >= 1; got {max_tokens}")
    if beam < 1:
        raise UserError(f"--beam: expected an integer >= 1; got {beam}")
    ids = torch.tensor([_prompt_ids(lm, prompt)], device=lm.device)
    logits, state = lm.model.prefill(ids)
    tok = lm.tokenizer
    if beam > 1:
        hyps = decoding.beam_search(lm.model, logits, state, beam, max_tokens, length_penalty=1.0)
        text = tok.decode(hyps[0][0].tokens)
        if on_text:
            on_text(text)
        return text
    gen = torch.Generator(device=lm.device)
    gen.manual_seed(seed if seed is not None else int(time.time_ns() % 2**63))
    try:
        steps = decoding.iter_sample(lm.model, logits, state, max_tokens, temperature=temperature, top_k=top_k,
                                     top_p=top_p, generator=gen)
    except ValueError as e:
        raise UserError(str(e)) from None
    produced: list[int] = []
    shown = ""
    for t in steps:
        produced.append(int(t[0]))
        text = tok.decode(produced)
        # Byte-level pieces may end inside a character: wait until it is whole.
        if on_text and not text.endswith("\ufffd") and len(text) > len(shown):
            on_text(text[len(shown):])
            shown = text
    text = tok.decode(produced)
    if on_text and len(text) > len(shown):
        on_text(text[len(shown):])
    return text


class _ConstrainedStep:
    """Wraps a model's step so that decoding must first spell out a typed partial word.

    The state carries, per row, how much of the partial word is still to come; tokens that disagree
    with it are masked out. Used for word and BPE vocabularies, where the partial word cannot simply be
    fed to the model as tokens.
    """

    def __init__(self, lm: LoadedLM, partial: str) -> None:
        self.lm = lm
        self.partial = partial
        V = lm.tokenizer.vocab_size
        self.texts = [lm.tokenizer.token_text(i) if i >= len(SPECIAL_TOKENS) else "" for i in range(V)]
        self._cache: dict[str, torch.Tensor] = {}

    def mask(self, logits: torch.Tensor, pending: list[str]) -> torch.Tensor:
        out = logits.clone()
        for row, rest in enumerate(pending):
            if not rest:
                continue
            out[row].masked_fill_(self._disallowed(rest).to(out.device), float("-inf"))
        return out

    def _disallowed(self, rest: str) -> torch.Tensor:
        """(V,) bool: tokens that disagree with the part still to spell; cached, as beams share it."""
        if rest not in self._cache:
            self._cache[rest] = torch.tensor(
                [not t or not (t.startswith(rest) or rest.startswith(t)) for t in self.texts])
        return self._cache[rest]

    def step(self, tokens: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        model_state, pending = state
        pending = [self._advance(rest, int(t)) for rest, t in zip(pending, tokens.tolist(), strict=True)]
        logits, model_state = self.lm.model.step(tokens, model_state)
        return self.mask(logits, pending), (model_state, pending)

    def _advance(self, rest: str, token: int) -> str:
        text = self.texts[token]
        return rest[len(text):] if rest.startswith(text) else ""

    def reorder_state(self, state: Any, index: torch.Tensor) -> Any:
        model_state, pending = state
        return self.lm.model.reorder_state(model_state, index), [pending[i] for i in index.tolist()]


Reader = Callable[[list[int]], tuple[torch.Tensor, Any]]


def complete(
    run_dir: str | Path | LoadedLM, prefix: str, n: int = 5, max_tokens: int = 20, reader: Reader | None = None
) -> list[dict[str, Any]]:
    """The n most probable ways to finish the word being typed (or the next word after a space).

    Character models read the whole prefix and search continuations up to the next word boundary.
    Word models rank the vocabulary's words that start with the typed part. BPE models read the text
    before the word, then search token sequences that spell out the typed part (space included) and
    stop at the next token that begins a new word.

    `reader(ids)` returns the logits (1, V) after reading the token ids and the state there; by
    default the model reads them afresh. A server passes one that reuses the states of a session, so
    that a keystroke costs a step, not a re-read of the prefix.

    Returns:
        best first, [{"text": the completed word, "completion": what to append, "probability": p}].
    """
    lm = _forward_model(ensure_loaded(run_dir, "lm"))

    def read(ids: list[int]) -> tuple[torch.Tensor, Any]:
        if reader is not None:
            return reader(ids)
        return lm.model.prefill(torch.tensor([ids], device=lm.device))

    if n < 1:
        raise UserError(f"--n: expected an integer >= 1; got {n}")
    if max_tokens < 2:
        raise UserError(f"max_tokens: expected an integer >= 2; got {max_tokens}")
    tok = lm.tokenizer
    ends_word = not prefix or prefix[-1].isspace()
    word_start = len(prefix) if ends_word else len(prefix) - len(prefix.split()[-1])
    partial = prefix[word_start:]  # the part of the current word already typed
    results: list[tuple[str, str, float]] = []
    if tok.kind == "char":
        logits, state = read(_prompt_ids(lm, prefix))
        for c in decoding.complete(lm.model, logits, state, n, max_tokens, tok.is_boundary)[0]:
            rest = tok.decode(c.tokens)
            if partial + rest:
                results.append((partial + rest, rest, c.probability))
    elif tok.kind in ("word", "space"):
        context = prefix[:word_start]
        logits, _ = read(_prompt_ids(lm, context or "\n"))
        logits = _ConstrainedStep(lm, partial).mask(logits, [partial])
        probs = logits.log_softmax(-1).exp()[0]
        top = probs.topk(min(n, int(torch.isfinite(logits).sum())))
        for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            word = tok.token_text(i)
            results.append((word, word[len(partial):], p))
    else:
        # Byte-level BPE attaches the space to the word after it: the typed part is " qu", not "qu".
        context = prefix[:word_start].rstrip()
        partial = prefix[len(context):] if context else partial
        logits, state = read(_prompt_ids(lm, context))
        wrapper = _ConstrainedStep(lm, partial)
        first = wrapper.mask(logits, [partial]).log_softmax(-1)[0]  # (V,)
        width = min(max(2 * n, 8), int(torch.isfinite(first).sum()))
        top = first.topk(width)
        rows = top.indices.unsqueeze(1)  # (K, 1)
        state = lm.model.reorder_state(state, torch.zeros(width, dtype=torch.long, device=lm.device))
        logits, state = wrapper.step(rows[:, 0], (state, [partial] * width))
        found = decoding.complete(wrapper, logits, state, n, max_tokens - 1, tok.is_boundary)
        for k in range(width):
            for c in found[k]:
                word = tok.decode([int(rows[k, 0]), *c.tokens])
                if word.strip():
                    p = float(top.values[k].exp()) * c.probability
                    results.append((word.strip(), word[len(partial):], p))
    results.sort(key=lambda r: -r[2])
    return [{"text": text, "completion": completion, "probability": p} for text, completion, p in results[:n]]
