"""Language modelling end to end: text files to a trained run, and a run to text, completions and figures.

What is here: the batch sources for a token stream (truncated BPTT) and for whole lines (full BPTT),
`train`, `load`, `evaluate`, `generate` and `complete` for language-model runs. What is not: the
network (models/language_model.py), the loop (train.py), the search algorithms (decoding.py).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rnnkit import decoding, distributed
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
    PAD_ID,
    SPECIAL_TOKENS,
    BucketedSource,
    StreamBatches,
    Tokenizer,
    build_tokenizer,
    load_tokenizer,
    pad_sequences,
    read_text,
    split_holdout,
)
from rnnkit.device import resolve_device
from rnnkit.evaluation import evaluate_model
from rnnkit.io import write_json
from rnnkit.models.language_model import IGNORE_INDEX, LanguageModel
from rnnkit.train import Trainer, open_run

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


def _encode(tokenizer: Tokenizer, text: str) -> torch.Tensor:
    return torch.tensor(tokenizer.encode(text), dtype=torch.long)


def _eval_source(ids: torch.Tensor, bptt: int, name: str) -> StreamSource:
    """A stream of up to EVAL_ROWS rows over held-out text, shortened to fit short texts."""
    n = ids.numel()
    if n < 2:
        raise UserError(f"{name}: the text has {n} token(s); at least 2 are needed to evaluate")
    bptt = bptt or 100
    rows = max(1, min(EVAL_ROWS, (n - 1) // (bptt + 1)))
    return StreamSource(ids, rows, min(bptt, n // rows - 1))


def _lines(tokenizer: Tokenizer, text: str) -> list[list[int]]:
    return [tokenizer.encode(line + "\n") for line in text.split("\n") if line.strip()]


def build_model(cfg: RunConfig, vocab_size: int) -> LanguageModel:
    m = cfg.model
    if m.bidirectional:
        raise UserError("--bidirectional: a language model reads left to right; drop the option")
    cutoffs = m.cutoffs()
    if cutoffs and cutoffs[-1] >= vocab_size:
        raise UserError(f"--adaptive-softmax {m.adaptive_softmax}: every cutoff must be below the vocabulary "
                        f"size {vocab_size}")
    if cutoffs and m.tie_weights:
        raise UserError("--adaptive-softmax and --tie-weights cannot be combined")
    return LanguageModel(vocab_size, m.embedding_size, m.hidden_size, m.num_layers, m.cell, m.dropout,
                         m.embedding_dropout, m.output_dropout, m.variational, m.tie_weights, m.fused, cutoffs,
                         m.recurrent_options())


def train(
    cfg: RunConfig,
    train_path: str | Path,
    out: str | Path,
    valid_path: str | Path | None = None,
    test_path: str | Path | None = None,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train a language model and write its run directory; returns the final figures."""
    cfg, out, say = open_run(cfg, out, resume, log)

    # Check what can be checked before anything is written.
    if cfg.model.bidirectional:
        raise UserError("--bidirectional: a language model reads left to right; drop the option")
    text = read_text(train_path)
    if valid_path is not None:
        valid_text = read_text(valid_path)
    else:
        text, valid_text = split_holdout(text, cfg.data.valid_fraction)

    if resume:
        tokenizer = load_tokenizer(out)
    else:
        options: dict[str, Any] = {}
        if cfg.data.tokenizer in ("word", "space"):
            options = {"min_freq": cfg.data.min_freq, "max_vocab": cfg.data.max_vocab}
        elif cfg.data.tokenizer == "bpe":
            options = {"vocab_size": cfg.data.vocab_size}
        tokenizer = build_tokenizer(cfg.data.tokenizer, text, **options)

    tc = cfg.train
    try:
        if tc.bptt > 0:
            train_src: Any = StreamSource(_encode(tokenizer, text), tc.batch_size, tc.bptt)
        else:
            train_src = LineSource(_lines(tokenizer, text), tc.batch_size, shuffle=True, seed=tc.seed)
    except UserError as e:
        raise UserError(f"{train_path}: {e}") from None
    valid_src = _eval_source(_encode(tokenizer, valid_text), tc.bptt, str(valid_path or "validation text"))
    if valid_path is None:
        say(f"no --valid given: holding out the last {cfg.data.valid_fraction:.0%} of {train_path} for validation")

    model = build_model(cfg, tokenizer.vocab_size)
    if cfg.model.embeddings and not resume:
        from rnnkit.data.vectors import pretrained_rows

        words = [tokenizer.token_text(i) for i in range(tokenizer.vocab_size)]
        matrix, found = pretrained_rows(cfg.model.embeddings, words, model.embedding.weight.detach().numpy(),
                                        skip=len(SPECIAL_TOKENS))
        with torch.no_grad():
            model.embedding.weight.copy_(torch.from_numpy(matrix))
        say(f"--embeddings {cfg.model.embeddings}: {found:,} of {len(words) - len(SPECIAL_TOKENS):,} tokens start "
            "from a pre-trained vector")
    if not resume and distributed.is_main():  # under torchrun, rank 0 writes the run's files
        out.mkdir(parents=True, exist_ok=True)
        tokenizer.save(out)
        write_json(out / CONFIG_FILE, {**cfg.to_dict(), "vocab_size": tokenizer.vocab_size, "versions": versions()})
    n_params = sum(p.numel() for p in model.parameters())
    say(f"language model: {cfg.model.cell} {cfg.model.num_layers}x{cfg.model.hidden_size}, "
        f"{tokenizer.kind} vocabulary {tokenizer.vocab_size}, {n_params:,} parameters; "
        f"{len(train_src)} batches per epoch")

    trainer = Trainer(model, train_src, valid_src, tc, out, log=log)
    state = trainer.run(resume)
    result: dict[str, Any] = {**trainer.summary(), "best_valid_loss": state.best}
    if test_path is not None and trainer.main:
        result["test"] = evaluate(out, test_path)
        say("test: " + " ".join(f"{k} {v:.4f}" for k, v in result["test"].items()))
    return result


@dataclass
class LoadedLM:
    """A trained language model with its tokenizer, ready to decode."""

    model: LanguageModel
    tokenizer: Tokenizer
    config: RunConfig
    device: torch.device


def load(run_dir: str | Path, device: str = "cpu") -> LoadedLM:
    """Load a language-model run (config, tokenizer, best weights) after checking it."""
    run_dir = Path(run_dir)
    meta = read_run_config(run_dir, task="lm")
    cfg = RunConfig.from_dict(meta, str(run_dir / CONFIG_FILE))
    tokenizer = load_tokenizer(run_dir)
    if meta.get("vocab_size") not in (None, tokenizer.vocab_size):
        raise UserError(f"{run_dir}: tokenizer has {tokenizer.vocab_size} tokens, config says {meta['vocab_size']}")
    model = build_model(cfg, tokenizer.vocab_size)
    load_weights(run_dir / MODEL_FILE, model)
    dev = resolve_device(device)
    model.to(dev).eval()
    return LoadedLM(model, tokenizer, cfg, dev)


def evaluate(run_dir: str | Path, data_path: str | Path) -> dict[str, float]:
    """Loss, perplexity and bits per token of a run on a text file (bits per character for char models)."""
    lm = load(run_dir)
    ids = _encode(lm.tokenizer, read_text(data_path))
    figures = evaluate_model(lm.model, _eval_source(ids, lm.config.train.bptt, str(data_path)), lm.device)
    if lm.tokenizer.kind == "char":
        figures["bits_per_character"] = figures["bits_per_token"]
    figures["tokens"] = float(ids.numel())
    return figures


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
    lm = run_dir if isinstance(run_dir, LoadedLM) else load(run_dir)
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
    lm = run_dir if isinstance(run_dir, LoadedLM) else load(run_dir)

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
