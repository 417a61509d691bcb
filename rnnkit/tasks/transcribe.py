"""Speech recognition with CTC: transcript manifests to a trained run, and a run to transcripts.

What is here: the batch source of recordings and their unit sequences (with a perturbed copy of each
recording drawn per epoch), the `transcribe` task (a manifest `path,text`; log-mel features computed so
that streaming gives the same frames; a scaler fitted on the training frames; units char, word or BPE;
scoring by WER and CER through jiwer and the CTC loss; transcripts from greedy or prefix beam search with
an optional language-model run and word list), `TranscriptStream` (audio pushed piece by piece, partial
transcripts out, the recurrent state carried between pieces) and `transcribe` (recordings to text from
Python). What is not: the network (models/transcriber.py), the audio readers and features (data/audio.py),
the search (decoding.py), the service's endpoints (serve/speech.py).

A run directory holds, besides what every run has: `tokenizer.json` (the output units; id 0, the padding
token, is the CTC blank) and `scaler.json` (feature settings, mean and standard deviation).
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rnnkit import decoding
from rnnkit.config import RunConfig, UserError
from rnnkit.data import (
    PAD_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    BucketedSource,
    Tokenizer,
    load_tokenizer,
    pad_sequences,
)
from rnnkit.data.audio import (
    FeatureScaler,
    FeatureSpec,
    FeatureStream,
    Utterance,
    load_wav,
    perturb,
    read_transcripts,
    stream_features,
)
from rnnkit.data.split import hold_out
from rnnkit.io import write_output
from rnnkit.models.transcriber import Transcriber
from rnnkit.tasks import runner
from rnnkit.tasks.base import GraphModule, LoadedRun, Prepared, Say, Task, check_size, fit_tokenizer

EVAL_BATCH = 32
TOKENIZER_KINDS = {"char": "char", "word": "space", "bpe": "bpe"}


# ------------------------------------------------------------------------------------- the data


class UtteranceSource(BucketedSource):
    """Recordings and their unit ids in padded batches of similar length; each epoch draws one of the
    prepared versions of every recording (the original, or a perturbed copy)."""

    def __init__(self, versions: list[list[torch.Tensor]], targets: list[list[int]], batch_size: int,
                 shuffle: bool, seed: int = 0) -> None:
        assert len(versions) == len(targets) and versions, "a source needs one transcript per recording"
        self.versions, self.targets = versions, targets
        super().__init__([int(v[0].shape[0]) for v in versions], batch_size, shuffle, seed)

    def batches(self, epoch: int, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        rng = np.random.default_rng([self.seed, epoch])
        picks = [int(rng.integers(len(v))) if self.shuffle else 0 for v in self.versions]
        for index in self.order(epoch)[start:]:
            inputs, lengths = pad_sequences([self.versions[i][picks[i]] for i in index])  # (B, T, F)
            targets, target_lengths = pad_sequences([self.targets[i] for i in index], PAD_ID)  # (B, U)
            yield {"inputs": inputs, "lengths": lengths, "targets": targets, "target_lengths": target_lengths}


def normalise_text(text: str, lowercase: bool) -> str:
    """A transcript as the run compares it: single spaces, lower case when the run says so."""
    text = " ".join(text.split())
    return text.lower() if lowercase else text


def feature_spec(cfg: RunConfig) -> FeatureSpec:
    o = cfg.options
    return FeatureSpec(kind="logmel", sample_rate=o.sample_rate, n_mels=o.n_mels)


def _versions(wave: np.ndarray, spec: FeatureSpec, speeds: Sequence[float], semitones: Sequence[float]
              ) -> list[np.ndarray]:
    """Features of a recording, then of its perturbed copies."""
    out = [stream_features(wave, spec)]
    out += [stream_features(perturb(wave, spec.sample_rate, speed=s), spec) for s in speeds if s != 1.0]
    out += [stream_features(perturb(wave, spec.sample_rate, semitones=p), spec) for p in semitones if p != 0.0]
    return out


def read_recordings(items: list[Utterance], spec: FeatureSpec, skip: bool, speeds: Sequence[float] = (),
                    semitones: Sequence[float] = (), say: Say | None = None, source: str = ""
                    ) -> tuple[list[list[np.ndarray]], list[Utterance]]:
    """The features of every recording (and its perturbed copies) and the utterances kept."""
    features, kept, skipped = [], [], []
    for item in items:
        try:
            wave = load_wav(item.path, spec.sample_rate)
        except UserError as e:
            if not skip:
                raise UserError(f"{source}: {item.where}: {e} (--skip-unreadable leaves such files out)") from None
            skipped.append(f"{item.where}: {e}")
            continue
        features.append(_versions(wave, spec, speeds, semitones))
        kept.append(item)
    if skipped and say is not None:
        say(f"{source}: skipped {len(skipped)} of {len(items)} unreadable file(s) (--skip-unreadable); first: "
            f"{skipped[0]}")
    if not kept:
        raise UserError(f"{source}: none of the {len(items)} files could be read")
    return features, kept


def check_alphabet(tokenizer: Tokenizer, items: Sequence[tuple[str, str]], source: str | Path) -> None:
    """Refuse transcripts with symbols the run's units cannot spell; `items` are (where, text)."""
    for where, text in items:
        unknown = [u for u in tokenizer.unknown_symbols(text) if u != " "] if tokenizer.kind == "char" else []
        if tokenizer.kind == "space":
            letters = {c for w in tokenizer.tokens[len(SPECIAL_TOKENS):] for c in w}
            unknown = list(dict.fromkeys(c for c in text if c != " " and c not in letters))
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:10])
            raise UserError(f"{source}: {where}: the transcript has {shown}, outside the run's alphabet "
                            f"(the units the run was trained with)")


def _unit_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text)


# --------------------------------------------------------------------------------------- the run


@dataclass
class LoadedTranscriber(LoadedRun):
    """A trained CTC model with its output units, feature settings and scaler."""

    tokenizer: Tokenizer
    scaler: FeatureScaler
    spec: FeatureSpec

    def frames(self, wave: np.ndarray) -> torch.Tensor:
        """Scaled features (T, F) of a whole recording at the run's sample rate."""
        return torch.from_numpy(self.scaler(stream_features(wave, self.spec)))

    def text(self, units: Sequence[int]) -> str:
        return " ".join(self.tokenizer.decode([u for u in units if u >= len(SPECIAL_TOKENS)]).split())


class TranscribeTask(Task):
    """Audio in, its transcript out: connected digits, voice commands, dictation."""

    name = "transcribe"
    summary = "speech recognition with CTC: a manifest CSV path,text of WAV/FLAC recordings"
    loaded_type = LoadedTranscriber
    streams_audio = True  # the service offers the audio stream and the microphone page
    limits_input_chars = False
    page = "transcribe.html"

    # -------------------------------------------------------------------------------- training

    def prepare(self, cfg: RunConfig, train_path: str | Path, valid_path: str | Path | None, out: Path,
                resume: bool, say: Say) -> Prepared:
        opts, tc = cfg.options, cfg.train
        spec = feature_spec(cfg)
        # Every file is read before anything else, so that a bad one stops the run before anything is written.
        started = time.perf_counter()
        train_items = self._items(train_path, opts.lowercase)
        valid_items = self._items(valid_path, opts.lowercase) if valid_path is not None else None
        train_x, train_items = read_recordings(train_items, spec, opts.skip_unreadable, opts.speeds(),
                                               opts.semitones(), say, str(train_path))
        if valid_items is not None:
            valid_x, valid_items = read_recordings(valid_items, spec, opts.skip_unreadable, say=say,
                                                   source=str(valid_path))
        else:
            train, valid = hold_out(list(zip(train_x, train_items, strict=True)), cfg.data.valid_fraction, "random",
                                    seed=tc.seed, source=str(train_path), unit="recordings")
            train_x, train_items = [x for x, _ in train], [it for _, it in train]
            valid_x, valid_items = [x[:1] for x, _ in valid], [it for _, it in valid]
            say(f"no --valid given: holding out a random {cfg.data.valid_fraction:.0%} of {train_path} "
                f"({len(valid_items)} recordings) for validation")
        say(f"features of {len(train_x) + len(valid_x)} recordings ({sum(len(v) for v in train_x)} training "
            f"versions) in {time.perf_counter() - started:.1f} s")
        if resume:
            tokenizer = load_tokenizer(out)
        else:
            tokenizer = fit_tokenizer(TOKENIZER_KINDS[opts.units], [it.text for it in train_items], cfg)
        check_alphabet(tokenizer, [(it.where, it.text) for it in valid_items], valid_path or train_path)
        scaler = FeatureScaler.load(out)[0] if resume else FeatureScaler.fit([v[0] for v in train_x])
        train_in = [[torch.from_numpy(scaler(x)) for x in v] for v in train_x]
        valid_in = [[torch.from_numpy(scaler(v[0]))] for v in valid_x]
        train_t = [_unit_ids(tokenizer, it.text) for it in train_items]
        valid_t = [_unit_ids(tokenizer, it.text) for it in valid_items]
        self._check_lengths(cfg, train_in, train_t, train_items, say, str(train_path))

        train_src = UtteranceSource(train_in, train_t, tc.batch_size, shuffle=True, seed=tc.seed)
        valid_src = UtteranceSource(valid_in, valid_t, EVAL_BATCH, shuffle=False)
        m = cfg.model
        seconds = sum(v[0].shape[0] for v in train_in) / 100
        return Prepared(
            train_src, valid_src, {"tokenizer": tokenizer, "scaler": scaler, "spec": spec},
            describe=f"transcriber: {m.cell} {m.num_layers}x{m.hidden_size}"
                     f"{' bidirectional' if m.bidirectional else ' unidirectional'}, log-mel x{spec.n_mels} "
                     f"stacked x{opts.stack}, {opts.units} units ({tokenizer.vocab_size} with the blank), "
                     f"{{params}} parameters; {len(train_in)} training recordings ({seconds / 60:.1f} min), "
                     f"{len(train_src)} batches per epoch",
            meta={"vocab_size": tokenizer.vocab_size, "input_size": spec.size})

    @staticmethod
    def _items(path: str | Path, lowercase: bool) -> list[Utterance]:
        items = read_transcripts(path)
        for it in items:
            it.text = normalise_text(it.text, lowercase)
        return items

    @staticmethod
    def _check_lengths(cfg: RunConfig, inputs: list[list[torch.Tensor]], targets: list[list[int]],
                       items: list[Utterance], say: Say, source: str) -> None:
        """Warn about recordings too short for their transcript: CTC needs a step per unit (and one more
        between repeated units)."""
        stack = cfg.options.stack
        short = []
        for v, t, it in zip(inputs, targets, items, strict=True):
            needed = len(t) + sum(1 for a, b in zip(t, t[1:], strict=False) if a == b)
            if math.ceil(v[0].shape[0] / stack) < needed:
                short.append(it.where)
        if short:
            say(f"{source}: {len(short)} recording(s) have fewer steps than their transcript needs after "
                f"--stack {stack} (first: {short[0]}); they add nothing to training (lower --stack or use "
                "--units word/bpe)")

    def build_model(self, cfg: RunConfig, tokenizer: Tokenizer, spec: FeatureSpec) -> Transcriber:
        m, o = cfg.model, cfg.options
        return Transcriber(spec.size, tokenizer.vocab_size, hidden_size=m.hidden_size, num_layers=m.num_layers,
                           cell=m.cell, bidirectional=m.bidirectional, dropout=m.dropout, stack=o.stack,
                           normalise=o.normalise, input_dropout=m.embedding_dropout,
                           output_dropout=m.output_dropout, freq_masks=o.freq_masks,
                           freq_mask_width=o.freq_mask_width, time_masks=o.time_masks,
                           time_mask_width=o.time_mask_width, fused=m.fused, recurrent_options=m.recurrent_options())

    def model_assets(self, assets: dict[str, Any]) -> dict[str, Any]:
        return {"tokenizer": assets["tokenizer"], "spec": assets["spec"]}

    def save(self, out: Path, prepared: Prepared) -> None:
        assets = prepared.assets
        assets["tokenizer"].save(out)
        assets["scaler"].save(out, assets["spec"])

    def check_test(self, cfg: RunConfig, test_path: str | Path, prepared: Prepared) -> None:
        items = self._items(test_path, cfg.options.lowercase)
        check_alphabet(prepared.assets["tokenizer"], [(it.where, it.text) for it in items], test_path)

    def test_result(self, figures: dict[str, Any]) -> tuple[dict[str, Any], str]:
        kept = {k: figures[k] for k in ("wer", "cer", "loss", "count")}
        return kept, f"test: wer {figures['wer']:.4f} cer {figures['cer']:.4f} loss {figures['loss']:.4f}"

    # ------------------------------------------------------------------------------ using a run

    def load_assets(self, run_dir: Path, cfg: RunConfig, meta: dict[str, Any]) -> dict[str, Any]:
        tokenizer = load_tokenizer(run_dir)
        check_size(run_dir, meta, "vocab_size", tokenizer.vocab_size, f"tokenizer has {tokenizer.vocab_size} units")
        scaler, spec = FeatureScaler.load(run_dir)
        return {"tokenizer": tokenizer, "scaler": scaler, "spec": spec}

    def evaluate(self, run: LoadedTranscriber, data_path: str | Path, beam: int | None = None,
                 lm: str | None = None, lm_weight: float | None = None, lexicon: str | None = None,
                 unit_bonus: float | None = None) -> dict[str, Any]:
        """WER and CER (jiwer, fractions), the mean CTC loss per recording, and the decoding speed.

        Args:
            run: the loaded run.
            data_path: a manifest `path,text`.
            beam, lm, lm_weight, lexicon, unit_bonus: the search (`decoder`).
        """
        import jiwer

        opts = run.config.options
        items = self._items(data_path, opts.lowercase)
        check_alphabet(run.tokenizer, [(it.where, it.text) for it in items], data_path)
        decode = decoder(run, beam, lm, lm_weight, lexicon, unit_bonus)
        features, items = read_recordings(items, run.spec, opts.skip_unreadable,
                                          say=lambda s: print(f"rnnkit: {s}", file=sys.stderr), source=str(data_path))
        inputs = [torch.from_numpy(run.scaler(v[0])) for v in features]
        targets = [_unit_ids(run.tokenizer, it.text) for it in items]
        started = time.perf_counter()
        log_probs, losses = _log_probs(run, inputs, targets)
        hypotheses = [run.text(decode(lp)) for lp in log_probs]
        seconds = time.perf_counter() - started
        references = [it.text for it in items]
        audio_seconds = sum(x.shape[0] for x in inputs) / 100
        return {
            "wer": float(jiwer.wer(references, hypotheses)),
            "cer": float(jiwer.cer(references, hypotheses)),
            "loss": float(np.mean(losses)),
            "count": len(items),
            "real_time_factor": seconds / max(audio_seconds, 1e-9),
            "errors": [{"where": it.where, "text": it.text, "found": h}
                       for it, h in zip(items, hypotheses, strict=True) if h != it.text][:20],
        }

    def predict(self, run: LoadedTranscriber, input_path: str | Path, output_path: str | Path,
                format: str | None = None, beam: int | None = None, lm: str | None = None,
                lm_weight: float | None = None, lexicon: str | None = None,
                unit_bonus: float | None = None) -> list[dict[str, Any]]:
        """Write one transcript per recording (plain lines, or JSONL with `--format jsonl`).

        Inputs: a manifest CSV with a `path` column (a `text` column, when present, is checked against the
        run's alphabet), or one audio path per line ("-": standard input).
        """
        fmt = format or ("jsonl" if str(output_path).lower().endswith((".jsonl", ".json")) else "text")
        if fmt not in ("text", "jsonl"):
            raise UserError(f"--format {fmt}: expected text or jsonl")
        items = _input_items(input_path)
        texts = [(it.where, normalise_text(it.text, run.config.options.lowercase)) for it in items if it.text]
        check_alphabet(run.tokenizer, texts, input_path)
        answers = transcribe(run, [it.path for it in items], beam=beam, lm=lm, lm_weight=lm_weight,
                             lexicon=lexicon, unit_bonus=unit_bonus, where=[it.where for it in items],
                             source=str(input_path))
        if fmt == "jsonl":
            text = "".join(json.dumps(a, ensure_ascii=False) + "\n" for a in answers)
        else:
            text = "".join(a["text"] + "\n" for a in answers)
        write_output(output_path, text)
        return answers

    # -------------------------------------------------------------------- serving and inspect

    def describe_run(self, run: LoadedTranscriber) -> dict[str, Any]:
        return {"units": run.config.options.units, "sample_rate": run.spec.sample_rate,
                "streaming": not run.model.bidirectional and run.config.options.normalise != "utterance"}

    def export_graphs(self, run: LoadedTranscriber) -> list[Any]:
        """One graph: scaled log-mel features (B, T, F) and their lengths to per-step log-probabilities
        (B, T', V) and the steps of each row; the units and feature settings go to export.json."""
        from rnnkit.export import Graph

        model = run.model.eval()

        def make(sizes: dict[str, int]) -> tuple[torch.Tensor, ...]:
            B, T = sizes["B"], sizes["T"]
            lengths = torch.randint(1, T + 1, (B,))
            lengths[0] = T  # the longest row fills the batch, as in a padded batch
            return torch.randn(B, T, run.spec.size), lengths

        return [Graph("transcribe", _TranscribeGraph(model), make({"B": 3, "T": 12}), ["features", "lengths"],
                      ["log_probs", "steps"], {"features": {0: "B", 1: "T"}, "lengths": {0: "B"}}, make,
                      check_sizes=[{"B": 1, "T": 5}, {"B": 4, "T": 31}], smallest={"T": model.stack + 1})]

    def export_extras(self, run: LoadedTranscriber) -> dict[str, Any]:
        return {"units": [run.tokenizer.token_text(i) if i >= len(SPECIAL_TOKENS) else SPECIAL_TOKENS[i]
                          for i in range(run.tokenizer.vocab_size)], "blank": 0,
                "features": {"sample_rate": run.spec.sample_rate, "n_mels": run.spec.n_mels, "window_s": 0.025,
                             "hop_s": 0.010, "mean": run.scaler.mean.tolist(), "std": run.scaler.std.tolist()}}

    def open_stream(self, run: LoadedTranscriber) -> TranscriptStream:
        """A stream for one recording at a time (`TranscriptStream`; unidirectional runs)."""
        return TranscriptStream(run)

    def transcribe_samples(self, run: LoadedTranscriber, samples: np.ndarray) -> dict[str, Any]:
        """The greedy transcript of a whole recording given as mono float32 samples at the run's rate:
        {"text", "seconds", "words"} (any run, bidirectional included)."""
        x = run.frames(samples)
        log_probs, _ = _log_probs(run, [x])
        units = decoding.ctc_collapse(log_probs[0].argmax(dim=-1).tolist())
        return {"text": run.text(units), "seconds": round(len(samples) / run.spec.sample_rate, 3),
                "words": word_times(run, log_probs[0])}

    def encoder_sequences(self, run: LoadedTranscriber, data_path: str | Path
                          ) -> tuple[Any, list[Any], Callable[..., Any]]:
        """Every recording of a manifest, its steps named by their first frame (10 ms each); the loss is
        the CTC loss of the recording."""
        from rnnkit.diagnostics import InspectSequence

        items = self._items(data_path, run.config.options.lowercase)
        features, items = read_recordings(items, run.spec, False, source=str(data_path))
        model = run.model
        found = []
        for v, it in zip(features, items, strict=True):
            x = torch.from_numpy(run.scaler(v[0]))
            t = torch.tensor(_unit_ids(run.tokenizer, it.text))
            steps = int(model.stacked_lengths(torch.tensor([x.shape[0]])))
            found.append(InspectSequence({"inputs": x[None], "lengths": torch.tensor([x.shape[0]]),
                                          "targets": t[None], "target_lengths": torch.tensor([len(t)])},
                                         [str(i * model.stack) for i in range(steps)]))

        def loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            return run.model.loss(batch).loss

        return run.model.rnn, found, loss


TASK = TranscribeTask()


class _TranscribeGraph(GraphModule):
    """Export: features (B, T, F), lengths (B,) -> log_probs (B, T', V), steps (B,)."""

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.model(inputs[0], inputs[1])


# ------------------------------------------------------------------------------------ inference


def _log_probs(run: LoadedTranscriber, inputs: list[torch.Tensor], targets: list[list[int]] | None = None
               ) -> tuple[list[torch.Tensor], list[float]]:
    """Per-step log-probabilities (T', V) of each recording, and its CTC loss when targets are given."""
    order = sorted(range(len(inputs)), key=lambda i: inputs[i].shape[0])
    out: list[Any] = [None] * len(inputs)
    losses: list[float] = [0.0] * len(inputs)
    model = run.model
    with torch.no_grad():
        for start in range(0, len(order), EVAL_BATCH):
            index = order[start:start + EVAL_BATCH]
            x, lengths = pad_sequences([inputs[i] for i in index])  # (B, T, F)
            log_probs, steps = model(x.to(run.device), lengths.to(run.device))  # (B, T', V)
            log_probs = log_probs.float().cpu()
            if targets is not None:
                t, t_lengths = pad_sequences([targets[i] for i in index], PAD_ID)
                loss = model.ctc(log_probs.transpose(0, 1), t, steps.cpu(), t_lengths)  # (B,)
                for i, value in zip(index, loss.tolist(), strict=True):
                    losses[i] = value
            for row, (i, n) in enumerate(zip(index, steps.tolist(), strict=True)):
                out[i] = log_probs[row, :n]
    return out, losses


def _read_lexicon(path: str | Path, tokenizer: Tokenizer, lowercase: bool) -> list[str]:
    """A word list: one word per line (the first field; the rest, a pronunciation say, is ignored)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"--lexicon: no such file {path}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"--lexicon {path}: not UTF-8 text ({e})") from None
    words = []
    for i, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        word = normalise_text(line.split()[0], lowercase)
        check_alphabet(tokenizer, [(f"line {i}", word)], path)
        words.append(word)
    if not words:
        raise UserError(f"--lexicon {path}: no words (expected one word per line)")
    return words


def _lm_scorer_factory(run: LoadedTranscriber, lm_dir: str) -> Callable[[], decoding.StepScorer]:
    """Scorers of a language-model run for this run's units (a new one, with a fresh cache, per recording)."""
    lm = runner.load(lm_dir, task="lm", device=str(run.device))
    unit_tokens = []
    for u in range(run.tokenizer.vocab_size):
        if u < len(SPECIAL_TOKENS):
            unit_tokens.append(-1)
            continue
        ids = lm.tokenizer.encode(run.tokenizer.token_text(u))
        unit_tokens.append(ids[0] if len(ids) == 1 else UNK_ID)
    mapped = sum(1 for t in unit_tokens if t >= len(SPECIAL_TOKENS))
    units = run.tokenizer.vocab_size - len(SPECIAL_TOKENS)
    if mapped < 0.8 * units:
        raise UserError(f"--lm {lm_dir}: its {lm.tokenizer.kind} tokens match only {mapped} of this run's {units} "
                        f"{run.config.options.units} units; use a language model with the same units (a char "
                        "model for char units, a word model for word units)")
    newline = lm.tokenizer.encode("\n")
    end = newline[0] if len(newline) == 1 and newline[0] >= len(SPECIAL_TOKENS) else None
    start = torch.tensor([newline if end is not None else [SPECIAL_TOKENS.index("<bos>")]], device=run.device)
    with torch.no_grad():
        logits, state = lm.model.prefill(start)

    def make() -> decoding.StepScorer:
        return decoding.StepScorer(lm.model, logits, state, unit_tokens, end)

    return make


def decoder(run: LoadedTranscriber, beam: int | None = None, lm: str | None = None, lm_weight: float | None = None,
            lexicon: str | None = None, unit_bonus: float | None = None) -> Callable[[torch.Tensor], list[int]]:
    """The search that reads units from per-step log-probabilities (T', V): greedy, or prefix beam search
    (`beam`, 8 when a language model or word list is given) fused with a language-model run (`lm`, weighted
    by `lm_weight`, default 0.5) and constrained to the words of `lexicon`; `unit_bonus` is added per unit."""
    if beam is not None and beam < 1:
        raise UserError(f"--beam: expected an integer >= 1; got {beam}")
    if lm is None and lm_weight is not None:
        raise UserError("--lm-weight: give --lm RUN, the language model it weights")
    if lm_weight is not None and lm_weight < 0:
        raise UserError(f"--lm-weight: expected a number >= 0; got {lm_weight}")
    if (beam is None or beam == 1) and lm is None and lexicon is None:
        return lambda lp: decoding.ctc_collapse(lp.argmax(dim=-1).tolist())
    lm_make = _lm_scorer_factory(run, lm) if lm is not None else None
    words = _read_lexicon(lexicon, run.tokenizer, run.config.options.lowercase) if lexicon is not None else None
    weight = 0.5 if lm_weight is None else lm_weight
    width = beam or 8

    def search(log_probs: torch.Tensor) -> list[int]:
        scorers: list[tuple[Any, float]] = []
        if lm_make is not None:
            scorers.append((lm_make(), weight))
        if words is not None:
            scorers.append((decoding.LexiconScorer(words, run.text, run.tokenizer.vocab_size), 1.0))
        found = decoding.ctc_prefix_beam_search(log_probs, width, scorers=scorers, unit_bonus=unit_bonus or 0.0)
        if not found:  # nothing the word list allows: the best path as it is
            warnings.warn("no transcript fits --lexicon; the greedy one is given", stacklevel=2)
            return decoding.ctc_collapse(log_probs.argmax(dim=-1).tolist())
        return found[0].units

    return search


def word_times(run: LoadedTranscriber, log_probs: torch.Tensor) -> list[dict[str, Any]]:
    """The words of the best path with the time each is heard: [{"word", "start", "end"}] in seconds (the
    frames where the path emits its units; CTC emits a unit near, not across, its sound)."""
    step = run.model.stack * 0.01  # seconds per step: stacked 10 ms frames
    words: list[dict[str, Any]] = []
    fresh = True
    for unit, start, end in decoding.ctc_segments(log_probs.argmax(dim=-1).tolist()):
        if unit < len(SPECIAL_TOKENS):
            continue
        piece = run.tokenizer.token_text(unit)
        if run.tokenizer.kind == "space":
            words.append({"word": piece, "start": start * step, "end": end * step})
            continue
        if piece.startswith(" "):
            fresh = True
        piece = piece.strip()
        if not piece:
            continue
        if fresh or not words:
            words.append({"word": piece, "start": start * step, "end": end * step})
            fresh = False
        else:
            words[-1]["word"] += piece
            words[-1]["end"] = end * step
    return [{"word": w["word"], "start": round(w["start"], 3), "end": round(w["end"], 3)} for w in words]


@dataclass
class _Input:
    path: Path
    text: str
    where: str


def _input_items(input_path: str | Path) -> list[_Input]:
    """The recordings `predict` reads: a manifest CSV, or one audio path per line ("-": standard input)."""
    if str(input_path) == "-":
        lines = [line.strip() for line in sys.stdin]
        items = [_Input(Path(p), "", f"line {i}") for i, p in enumerate(lines, start=1) if p]
    elif str(input_path).lower().endswith(".csv"):
        items = [_Input(u.path, u.text, u.where) for u in read_transcripts(input_path, text_required=False)]
    else:
        path = Path(input_path)
        if not path.is_file():
            raise UserError(f"--input: no such file {path}")
        if path.suffix.lower() in (".wav", ".flac"):
            return [_Input(path, "", "line 1")]
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        items = [_Input(Path(p) if Path(p).is_absolute() else path.parent / p, "", f"line {i}")
                 for i, p in enumerate(lines, start=1) if p]
    if not items:
        raise UserError(f"{input_path}: no recordings (expected audio paths, one per line, or a manifest CSV)")
    for it in items:
        if not it.path.is_file():
            raise UserError(f"{input_path}: {it.where}: no such file {str(it.path)!r}")
    return items


def transcribe(run: str | Path | LoadedTranscriber, paths: Sequence[str | Path], beam: int | None = None,
               lm: str | None = None, lm_weight: float | None = None, lexicon: str | None = None,
               unit_bonus: float | None = None, where: Sequence[str] | None = None, source: str = "input"
               ) -> list[dict[str, Any]]:
    """Transcripts of audio files.

    Args:
        run: a loaded transcribe run, or its run directory.
        paths: WAV or FLAC files (any sample rate).
        beam, lm, lm_weight, lexicon, unit_bonus: the search (`decoder`).
    Returns:
        [{"path", "text", "seconds"}] in the order of `paths`; with the greedy search also "words", each word
        with its `start` and `end` in seconds.
    """
    tr = runner.ensure_loaded(run, "transcribe")
    decode = decoder(tr, beam, lm, lm_weight, lexicon, unit_bonus)
    inputs = []
    for i, p in enumerate(paths):
        try:
            inputs.append(tr.frames(load_wav(p, tr.spec.sample_rate)))
        except UserError as e:
            at = where[i] if where is not None else f"input {i + 1}"
            raise UserError(f"{source}: {at}: {e}") from None
    log_probs, _ = _log_probs(tr, inputs)
    greedy = (beam is None or beam == 1) and lm is None and lexicon is None
    answers = []
    for p, x, lp in zip(paths, inputs, log_probs, strict=True):
        answer = {"path": str(p), "text": tr.text(decode(lp)), "seconds": round(x.shape[0] / 100, 2)}
        if greedy:
            answer["words"] = word_times(tr, lp)
        answers.append(answer)
    return answers


@dataclass
class TranscriptStream:
    """One recording at a time, pushed in pieces: partial transcripts as the audio arrives, the final one
    when it ends. Features, frame stacking, normalisation and the recurrent state are carried between
    pieces, so that the final transcript is the one of the whole recording (greedy decoding)."""

    run: LoadedTranscriber
    features: FeatureStream = field(init=False)
    state: Any = field(init=False)
    path: list[int] = field(init=False)  # the best unit at every step so far
    units: list[int] = field(init=False)

    def __post_init__(self) -> None:
        if self.run.model.bidirectional or self.run.config.options.normalise == "utterance":
            raise UserError(f"{self.run.run_dir.name}: this run reads whole recordings (bidirectional or "
                            "--normalise utterance); streaming needs a unidirectional run")
        self.reset()

    def reset(self) -> None:
        """Start a new recording."""
        self.features = FeatureStream(self.run.spec)
        self.state = self.run.model.start_stream()
        self.path, self.units = [], []

    @property
    def seconds(self) -> float:
        return self.features.samples / self.run.spec.sample_rate

    def _read(self, frames: np.ndarray, final: bool) -> None:
        x = torch.from_numpy(self.run.scaler(frames)).to(self.run.device)[None]  # (1, T, F)
        log_probs, self.state = self.run.model.stream(x, self.state, final=final)  # (1, T', V)
        best = log_probs[0].argmax(dim=-1).tolist()
        previous = self.path[-1] if self.path else None
        self.units += decoding.ctc_collapse(best, previous=previous)
        self.path += best

    def push(self, samples: np.ndarray) -> str:
        """Add mono float32 samples at the run's rate; returns the transcript so far."""
        self._read(self.features.push(samples), final=False)
        return self.run.text(self.units)

    def finish(self) -> str:
        """End the recording; returns its final transcript and makes the stream ready for the next one."""
        self._read(self.features.finish(), final=True)
        text = self.run.text(self.units)
        self.reset()
        return text
