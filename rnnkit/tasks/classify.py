"""Sequence classification end to end: labelled text or WAV manifests to a trained run, and a run to labels.

What is here: the batch source for whole sequences with one label each, `train` (text: CSV/TSV/JSONL/
SST lines and a tokenizer; audio: a manifest, log-mel or MFCC features and a scaler fitted on the
training data; optionally the embeddings and encoder of a language-model run as the starting point),
`load`, `classify` (probabilities for texts or WAV files from Python), `evaluate` (accuracy, macro F1,
per-class figures, confusion matrix and its plot) and `predict` (label and probabilities per input, as
CSV or JSONL). What is not: the network (models/classifier.py), the readers (data/tabular.py,
data/audio.py), the loop (train.py) and the report arithmetic (metrics.py).

A run directory holds, besides what every run has: `labels.json` (the class names, in output order),
`tokenizer.json` for text runs, `scaler.json` (feature settings, mean and standard deviation) for audio.
"""

from __future__ import annotations

import csv
import io
import json
import random
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rnnkit import distributed
from rnnkit.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    load_weights,
    read_run_config,
    versions,
)
from rnnkit.config import RunConfig, UserError
from rnnkit.data import (
    PAD_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    BucketedSource,
    Tokenizer,
    build_tokenizer,
    load_tokenizer,
    pad_sequences,
)
from rnnkit.data.audio import AudioItem, FeatureScaler, FeatureSpec, load_features, read_manifest
from rnnkit.data.tabular import LabelledText, check_labels, read_labelled, read_texts, texts_from_lines
from rnnkit.data.vectors import embedding_matrix, read_vectors
from rnnkit.device import resolve_device
from rnnkit.io import atomic_write, read_json, write_json
from rnnkit.metrics import classification_report
from rnnkit.models.classifier import SequenceClassifier
from rnnkit.train import Trainer, open_run
from rnnkit.viz import write_confusion_plot

LABELS_FILE = "labels.json"
EVAL_BATCH = 64


class SequenceSource(BucketedSource):
    """Whole sequences with one label each, in padded batches of similar length (full BPTT)."""

    def __init__(self, inputs: list[torch.Tensor], targets: list[int], batch_size: int, shuffle: bool,
                 seed: int = 0) -> None:
        assert len(inputs) == len(targets) and inputs, "a source needs one target per input"
        self.inputs, self.targets = inputs, targets
        super().__init__([int(x.shape[0]) for x in inputs], batch_size, shuffle, seed)

    def batches(self, epoch: int, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        for index in self.order(epoch)[start:]:
            inputs, lengths = pad_sequences([self.inputs[i] for i in index], PAD_ID)  # (B, T) or (B, T, F)
            yield {"inputs": inputs, "lengths": lengths, "targets": torch.tensor([self.targets[i] for i in index])}


# ------------------------------------------------------------------------------------- labels


def _sorted_labels(labels: Sequence[str]) -> list[str]:
    """Distinct labels: numerically when all are integers ("2" before "10"), else alphabetically."""
    distinct = set(labels)
    try:
        return sorted(distinct, key=int)
    except ValueError:
        return sorted(distinct)


def _holdout(records: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """A seeded random `fraction` of the records for validation; the rest for training."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_valid = max(1, round(len(records) * fraction))
    if len(records) - n_valid < 2:
        raise UserError(f"only {len(records)} training records: too few to hold out a validation part; "
                        "pass --valid")
    valid = sorted(order[:n_valid])
    keep = sorted(order[n_valid:])
    return [records[i] for i in keep], [records[i] for i in valid]


# ------------------------------------------------------------------------------------- inputs


def _token_tensor(tokenizer: Tokenizer, text: str) -> torch.Tensor:
    ids = tokenizer.encode(text) or [UNK_ID]  # a text of symbols the tokenizer drops still gets one step
    return torch.tensor(ids, dtype=torch.long)


def _fit_tokenizer(cfg: RunConfig, texts: list[str]) -> Tokenizer:
    d = cfg.data
    options: dict[str, Any] = {}
    if d.tokenizer in ("word", "space"):
        options = {"min_freq": d.min_freq, "max_vocab": d.max_vocab}
    elif d.tokenizer == "bpe":
        options = {"vocab_size": d.vocab_size}
    return build_tokenizer(d.tokenizer, "\n".join(texts), **options)


def _extend_tokenizer(base: Tokenizer, texts: list[str], min_freq: int) -> Tokenizer:
    """A word/space tokenizer holding `base`'s tokens (same ids) and then the new training words."""
    if base.kind not in ("word", "space"):
        return base
    known = {base.token_text(i) for i in range(base.vocab_size)}
    counts = Counter(t for text in texts for t in type(base).split(text) if t not in known and t != "<unk>")
    return _add_words(base, sorted((t for t, n in counts.items() if n >= min_freq), key=lambda t: (-counts[t], t)))


def _add_words(base: Tokenizer, words: list[str]) -> Tokenizer:
    """A word/space tokenizer holding `base`'s tokens (same ids) and then `words` it lacks."""
    tokens = [base.token_text(i) for i in range(base.vocab_size)]
    known = set(tokens)
    new = [w for w in dict.fromkeys(words) if w not in known]
    return type(base)(list(SPECIAL_TOKENS) + tokens[len(SPECIAL_TOKENS):] + new)


def _initialise_from_lm(model: SequenceClassifier, lm_model: torch.nn.Module, lm_tokenizer: Tokenizer,
                        tokenizer: Tokenizer, say: Callable[[str], None]) -> None:
    """Copy the language model's embedding rows and every recurrent weight whose name and shape fit.

    A training word the language model lacks starts from the embedding of its capitalised or upper-case
    form when the language model has that ("paris" from "Paris"), else from random values.
    """
    assert model.embedding is not None
    rows = lm_model.embedding.weight.shape[0]
    borrowed = 0
    with torch.no_grad():
        model.embedding.weight[:rows].copy_(lm_model.embedding.weight)
        for i in range(rows, tokenizer.vocab_size):
            word = tokenizer.token_text(i)
            for variant in (word.capitalize(), word.title(), word.upper()):
                ids = lm_tokenizer.encode(variant)
                if len(ids) == 1 and ids[0] >= len(SPECIAL_TOKENS):
                    model.embedding.weight[i].copy_(lm_model.embedding.weight[ids[0]])
                    borrowed += 1
                    break
        model.embedding.weight[PAD_ID].zero_()
        ours = dict(model.rnn.named_parameters())
        copied = []
        for name, p in lm_model.rnn.named_parameters():
            if name in ours and ours[name].shape == p.shape:
                ours[name].copy_(p)
                copied.append(name)
    layers = ", ".join(sorted({n.rsplit("_", 1)[-1] for n in copied}))
    say(f"initialised from the language model: embeddings of {rows} tokens (and {borrowed} new words from their "
        f"capitalised forms), {len(copied)} recurrent tensors ({layers})")


def _audio_spec(cfg: RunConfig) -> FeatureSpec:
    o = cfg.options
    return FeatureSpec(kind=o.features, sample_rate=o.sample_rate, n_mels=o.n_mels, n_mfcc=o.n_mfcc,
                       recording_mean=o.recording_mean)


def _read_audio(path: str | Path, spec: FeatureSpec, skip: bool, say: Callable[[str], None],
                label_required: bool = True) -> tuple[list[np.ndarray], list[AudioItem]]:
    items = read_manifest(path, label_required=label_required)
    features, kept, skipped = load_features(items, spec, skip)
    if skipped:
        say(f"{path}: skipped {len(skipped)} of {len(items)} unreadable file(s) (--skip-unreadable); first: "
            f"{skipped[0]}")
    if not kept:
        raise UserError(f"{path}: none of the {len(items)} files could be read")
    return features, kept


# --------------------------------------------------------------------------------------- model


def build_model(cfg: RunConfig, num_classes: int, vocab_size: int | None, input_size: int | None,
                class_weights: torch.Tensor | None = None) -> SequenceClassifier:
    m = cfg.model
    if num_classes < 2:
        raise UserError(f"the training data has {num_classes} label(s); classification needs at least 2")
    return SequenceClassifier(num_classes, vocab_size=vocab_size, input_size=input_size,
                              embedding_size=m.embedding_size, hidden_size=m.hidden_size, num_layers=m.num_layers,
                              cell=m.cell, bidirectional=m.bidirectional, dropout=m.dropout,
                              embedding_dropout=m.embedding_dropout, output_dropout=m.output_dropout,
                              pooling=cfg.options.pooling, class_weights=class_weights, fused=m.fused,
                              recurrent_options=m.recurrent_options())


def train(
    cfg: RunConfig,
    train_path: str | Path,
    out: str | Path,
    valid_path: str | Path | None = None,
    test_path: str | Path | None = None,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train a sequence classifier and write its run directory; returns the final figures."""
    cfg, out, say = open_run(cfg, out, resume, log)
    pretrained = None  # (vectors, size) of --embeddings, read once
    opts, tc = cfg.options, cfg.train
    if opts.audio and opts.init_from:
        raise UserError("--init-from starts a text classifier from a language model; it does not apply to --audio")

    # Read everything first, so that a bad file stops the run before anything is written.
    lm_model = lm_tokenizer = None
    if opts.audio:
        spec = _audio_spec(cfg)
        train_x, train_items = _read_audio(train_path, spec, opts.skip_unreadable, say)
        train_y = [it.label for it in train_items]
        if valid_path is not None:
            valid_x, valid_items = _read_audio(valid_path, spec, opts.skip_unreadable, say)
            valid_y, valid_where = [it.label for it in valid_items], [it.where for it in valid_items]
    else:
        records = read_labelled(train_path, opts.text_column, opts.label_column)
        valid_records = read_labelled(valid_path, opts.text_column, opts.label_column) if valid_path else None
        if valid_records is None:
            records, valid_records = _holdout(records, cfg.data.valid_fraction, tc.seed)
            say(f"no --valid given: holding out a random {cfg.data.valid_fraction:.0%} of {train_path} "
                f"({len(valid_records)} records) for validation")
        train_y = [r.label for r in records]
        valid_y, valid_where = [r.label for r in valid_records], [r.where for r in valid_records]
    if opts.audio and valid_path is None:
        pairs = list(zip(train_x, train_y, strict=True))
        pairs, held = _holdout(pairs, cfg.data.valid_fraction, tc.seed)
        say(f"no --valid given: holding out a random {cfg.data.valid_fraction:.0%} of {train_path} "
            f"({len(held)} recordings) for validation")
        train_x, train_y = [p[0] for p in pairs], [p[1] for p in pairs]
        valid_x, valid_y = [p[0] for p in held], [p[1] for p in held]
        valid_where = ["held-out part"] * len(held)

    labels = read_json(out / LABELS_FILE)["labels"] if resume else _sorted_labels(train_y)
    if len(labels) < 2:
        raise UserError(f"{train_path}: every record has the label {labels[0]!r}; classification needs at least "
                        "two classes")
    check_labels(zip(valid_where, valid_y, strict=True), labels, valid_path or train_path)
    if test_path is not None:  # a bad test file is reported now rather than after training
        if opts.audio:
            test_gold = [(it.where, it.label) for it in read_manifest(test_path)]
        else:
            test_gold = [(r.where, r.label) for r in read_labelled(test_path, opts.text_column, opts.label_column)]
        check_labels(test_gold, labels, test_path)
    index = {label: i for i, label in enumerate(labels)}
    train_t = [index[y] for y in train_y]
    valid_t = [index[y] for y in valid_y]

    tokenizer: Tokenizer | None = None
    scaler: FeatureScaler | None = None
    if opts.audio:
        scaler = FeatureScaler.load(out)[0] if resume else FeatureScaler.fit(train_x)
        train_in = [torch.from_numpy(scaler(x)) for x in train_x]
        valid_in = [torch.from_numpy(scaler(x)) for x in valid_x]
        vocab_size, input_size = None, spec.size
    else:
        texts = [r.text for r in records]
        if resume:
            tokenizer = load_tokenizer(out)
        elif opts.init_from:
            from rnnkit.tasks import lm as lm_task

            loaded_lm = lm_task.load(opts.init_from)
            lm_cfg = loaded_lm.config.model
            lm_model, lm_tokenizer = loaded_lm.model, loaded_lm.tokenizer
            tokenizer = _extend_tokenizer(loaded_lm.tokenizer, texts, cfg.data.min_freq)
            cfg.data.tokenizer = loaded_lm.tokenizer.kind
            cfg.model.cell, cfg.model.embedding_size, cfg.model.hidden_size = (
                lm_cfg.cell, lm_cfg.embedding_size, lm_cfg.hidden_size)
            say(f"--init-from {opts.init_from}: {lm_cfg.cell}, embeddings {lm_cfg.embedding_size}, hidden "
                f"{lm_cfg.hidden_size} taken from the language model; {loaded_lm.tokenizer.kind} vocabulary "
                f"{loaded_lm.tokenizer.vocab_size} + {tokenizer.vocab_size - loaded_lm.tokenizer.vocab_size} "
                "training words")
        else:
            tokenizer = _fit_tokenizer(cfg, texts)
            if cfg.model.embeddings and tokenizer.kind in ("word", "space"):
                # Words with a pre-trained vector join the vocabulary even when training never shows them,
                # so that a test sentence's unseen words still carry meaning (most of all with frozen vectors).
                before = tokenizer.vocab_size
                pretrained = read_vectors(cfg.model.embeddings)
                tokenizer = _add_words(tokenizer, list(pretrained[0]))
                say(f"--embeddings: {tokenizer.vocab_size - before:,} words of the vectors file added to the "
                    f"{before:,} of the training data")
        train_in = [_token_tensor(tokenizer, t) for t in texts]
        valid_in = [_token_tensor(tokenizer, r.text) for r in valid_records]
        vocab_size, input_size = tokenizer.vocab_size, None

    weights = None
    if opts.class_weights:
        counts = np.bincount(train_t, minlength=len(labels)).astype(np.float64)
        weights = torch.tensor(len(train_t) / (len(labels) * np.maximum(counts, 1)), dtype=torch.float32)
    model = build_model(cfg, len(labels), vocab_size, input_size, weights)
    if lm_model is not None:
        _initialise_from_lm(model, lm_model, lm_tokenizer, tokenizer, say)
    if cfg.model.embeddings and not resume:
        if model.embedding is None:
            raise UserError("--embeddings: audio runs read features, not words; drop the option")
        words = [tokenizer.token_text(i) for i in range(tokenizer.vocab_size)]
        vectors, dim = pretrained or read_vectors(cfg.model.embeddings, words[len(SPECIAL_TOKENS):])
        matrix, found = embedding_matrix(words, vectors, dim, base=model.embedding.weight.detach().numpy(),
                                         skip=len(SPECIAL_TOKENS))
        with torch.no_grad():
            model.embedding.weight.copy_(torch.from_numpy(matrix))
        say(f"--embeddings {cfg.model.embeddings}: {found:,} of {len(words) - len(SPECIAL_TOKENS):,} words "
            "start from a pre-trained vector")
    if opts.freeze_embeddings and model.embedding is not None:
        model.embedding.weight.requires_grad_(False)

    train_src = SequenceSource(train_in, train_t, tc.batch_size, shuffle=True, seed=tc.seed)
    valid_src = SequenceSource(valid_in, valid_t, EVAL_BATCH, shuffle=False)
    if not resume and distributed.is_main():  # under torchrun, rank 0 writes the run's files
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / LABELS_FILE, {"labels": labels})
        if tokenizer is not None:
            tokenizer.save(out)
        if scaler is not None:
            scaler.save(out, spec)
        write_json(out / CONFIG_FILE, {**cfg.to_dict(), "labels": labels, "vocab_size": vocab_size,
                                       "input_size": input_size, "versions": versions()})
    n_params = sum(p.numel() for p in model.parameters())
    kind = f"audio {spec.kind} x{spec.size}" if opts.audio else f"{tokenizer.kind} vocabulary {tokenizer.vocab_size}"
    say(f"classifier: {cfg.model.cell} {cfg.model.num_layers}x{cfg.model.hidden_size}"
        f"{' bidirectional' if cfg.model.bidirectional else ''}, {opts.pooling} pooling, {kind}, "
        f"{len(labels)} classes, {n_params:,} parameters; {len(train_in)} training sequences, "
        f"{len(train_src)} batches per epoch")

    trainer = Trainer(model, train_src, valid_src, tc, out, log=log)
    state = trainer.run(resume)
    result: dict[str, Any] = {**trainer.summary(), "best_valid_accuracy": state.best}
    if test_path is not None and trainer.main:
        report = evaluate(out, test_path)
        result["test"] = {k: report[k] for k in ("accuracy", "macro_f1", "count")}
        say(f"test: accuracy {report['accuracy']:.4f} macro_f1 {report['macro_f1']:.4f}")
    return result


# ------------------------------------------------------------------------------------ inference


@dataclass
class LoadedClassifier:
    """A trained classifier with what turns inputs into its tensors."""

    model: SequenceClassifier
    labels: list[str]
    config: RunConfig
    device: torch.device
    tokenizer: Tokenizer | None = None
    scaler: FeatureScaler | None = None
    spec: FeatureSpec | None = None

    @property
    def audio(self) -> bool:
        return self.scaler is not None


def load(run_dir: str | Path, device: str = "cpu") -> LoadedClassifier:
    """Load a classification run (config, labels, tokenizer or scaler, best weights) after checking it."""
    run_dir = Path(run_dir)
    meta = read_run_config(run_dir, task="classify")
    cfg = RunConfig.from_dict(meta, str(run_dir / CONFIG_FILE))
    labels = read_json(run_dir / LABELS_FILE).get("labels")
    if not isinstance(labels, list) or len(labels) < 2:
        raise UserError(f"{run_dir / LABELS_FILE}: expected {{\"labels\": [two or more names]}}")
    tokenizer = scaler = spec = None
    if cfg.options.audio:
        scaler, spec = FeatureScaler.load(run_dir)
        model = build_model(cfg, len(labels), None, spec.size)
    else:
        tokenizer = load_tokenizer(run_dir)
        if meta.get("vocab_size") not in (None, tokenizer.vocab_size):
            raise UserError(f"{run_dir}: tokenizer has {tokenizer.vocab_size} tokens, config says "
                            f"{meta['vocab_size']}")
        model = build_model(cfg, len(labels), tokenizer.vocab_size, None)
    load_weights(run_dir / MODEL_FILE, model)
    dev = resolve_device(device)
    model.to(dev).eval()
    return LoadedClassifier(model, labels, cfg, dev, tokenizer, scaler, spec)


def _probabilities(clf: LoadedClassifier, inputs: list[torch.Tensor]) -> np.ndarray:
    """(N, C) class probabilities, in the order of `inputs` (batched by length for speed)."""
    order = sorted(range(len(inputs)), key=lambda i: inputs[i].shape[0])
    probs = np.zeros((len(inputs), len(clf.labels)), dtype=np.float64)
    for start in range(0, len(order), EVAL_BATCH):
        index = order[start:start + EVAL_BATCH]
        batch, lengths = pad_sequences([inputs[i] for i in index], PAD_ID)
        p = clf.model.predict_proba(batch.to(clf.device), lengths.to(clf.device))  # (B, C)
        probs[index] = p.double().cpu().numpy()
    return probs


def _text_inputs(clf: LoadedClassifier, texts: Sequence[str]) -> list[torch.Tensor]:
    assert clf.tokenizer is not None
    return [_token_tensor(clf.tokenizer, t) for t in texts]


def _audio_inputs(clf: LoadedClassifier, items: list[AudioItem], skip: bool = False
                  ) -> tuple[list[torch.Tensor], list[AudioItem]]:
    assert clf.scaler is not None and clf.spec is not None
    features, kept, skipped = load_features(items, clf.spec, skip)
    if skipped:
        print(f"rnnkit: skipped {len(skipped)} unreadable file(s); first: {skipped[0]}", file=sys.stderr)
    return [torch.from_numpy(clf.scaler(x)) for x in features], kept


def classify(run_dir: str | Path | LoadedClassifier, inputs: Sequence[str]) -> list[dict[str, Any]]:
    """Label and probabilities for each text (text runs) or WAV path (audio runs).

    Returns:
        [{"input", "label", "probabilities": {label: p}}] in the order of `inputs`.
    """
    clf = run_dir if isinstance(run_dir, LoadedClassifier) else load(run_dir)
    if clf.audio:
        items = [AudioItem(Path(p), None, f"input {i + 1}") for i, p in enumerate(inputs)]
        tensors, _ = _audio_inputs(clf, items)
    else:
        for i, t in enumerate(inputs):
            if not t.strip():
                raise UserError(f"input {i + 1}: the text is empty; expected some text to classify")
        tensors = _text_inputs(clf, inputs)
    probs = _probabilities(clf, tensors)
    return [_answer(clf, str(x), p) for x, p in zip(inputs, probs, strict=True)]


def _answer(clf: LoadedClassifier, shown: str, p: np.ndarray) -> dict[str, Any]:
    return {"input": shown, "label": clf.labels[int(p.argmax())],
            "probabilities": {label: round(float(v), 6) for label, v in zip(clf.labels, p, strict=True)}}


def labelled_inputs(clf: LoadedClassifier, data_path: str | Path) -> tuple[list[torch.Tensor], list[int]]:
    """The model inputs of a labelled file (texts, or a manifest for audio runs) and their class indices,
    after checking that every label is one the run knows."""
    opts = clf.config.options
    if clf.audio:
        items = read_manifest(data_path)
        tensors, kept = _audio_inputs(clf, items, opts.skip_unreadable)
        gold = [(it.where, it.label) for it in kept]
    else:
        records = read_labelled(data_path, opts.text_column, opts.label_column)
        tensors = _text_inputs(clf, [r.text for r in records])
        gold = [(r.where, r.label) for r in records]
    check_labels(gold, clf.labels, data_path)
    index = {label: i for i, label in enumerate(clf.labels)}
    return tensors, [index[g] for _, g in gold]


def evaluate(run_dir: str | Path, data_path: str | Path, plot: str | None = None) -> dict[str, Any]:
    """Accuracy, macro F1, per-class precision/recall/F1/support and the confusion matrix on labelled data.

    Args:
        run_dir: the run.
        data_path: labelled data in the run's format (text formats, or a manifest for audio runs).
        plot: where to write the confusion matrix as PNG, or None.
    """
    clf = load(run_dir)
    tensors, gold = labelled_inputs(clf, data_path)
    probs = _probabilities(clf, tensors)
    report = classification_report(gold, probs.argmax(axis=1).tolist(), clf.labels)
    if plot:
        write_confusion_plot(plot, report["confusion"]["matrix"], clf.labels,
                             title=f"{Path(data_path).name}: accuracy {report['accuracy']:.1%}")
    return report


def predict(run_dir: str | Path, input_path: str | Path, output_path: str | Path = "-",
            format: str | None = None) -> list[dict[str, Any]]:
    """Write the label and class probabilities of every input as CSV or JSONL.

    Inputs: text runs read a CSV/TSV/JSONL with the text column or plain text, one per line ("-" is
    standard input); audio runs read a manifest CSV with a `path` column, or one WAV path per line.
    `format` is `csv` or `jsonl`; by default it follows `output_path`'s extension, else CSV.
    """
    fmt = format or ("jsonl" if str(output_path).lower().endswith((".jsonl", ".json")) else "csv")
    if fmt not in ("csv", "jsonl"):
        raise UserError(f"--format {fmt}: expected csv or jsonl")
    clf = load(run_dir)
    opts = clf.config.options
    if clf.audio:
        if str(input_path) == "-":
            lines = [line.strip() for line in sys.stdin if line.strip()]
            items = [AudioItem(Path(p), None, f"line {i + 1}") for i, p in enumerate(lines)]
        elif str(input_path).lower().endswith(".csv"):
            items = read_manifest(input_path, label_required=False)
        else:
            lines = [line.strip() for line in Path(input_path).read_text(encoding="utf-8").splitlines()]
            items = [AudioItem(Path(p), None, f"line {i + 1}") for i, p in enumerate(lines) if p]
        for it in items:
            if not it.path.is_file():
                raise UserError(f"{input_path}: {it.where}: no such file {str(it.path)!r}")
        tensors, kept = _audio_inputs(clf, items, opts.skip_unreadable)
        shown = [str(it.path) for it in kept]
    else:
        if str(input_path) == "-":
            records: list[LabelledText] = texts_from_lines(sys.stdin)
        else:
            records = read_texts(input_path, opts.text_column, opts.label_column)
        tensors = _text_inputs(clf, [r.text for r in records])
        shown = [r.text for r in records]
    probs = _probabilities(clf, tensors)
    answers = [_answer(clf, s, p) for s, p in zip(shown, probs, strict=True)]
    text = _format_answers(answers, clf.labels, fmt)
    if str(output_path) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        atomic_write(output_path, text)
    return answers


def _format_answers(answers: list[dict[str, Any]], labels: list[str], fmt: str) -> str:
    if fmt == "jsonl":
        return "".join(json.dumps(a, ensure_ascii=False) + "\n" for a in answers)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["input", "label", *(f"p_{label}" for label in labels)])
    for a in answers:
        writer.writerow([a["input"], a["label"], *(f"{a['probabilities'][label]:.6f}" for label in labels)])
    return buf.getvalue()
