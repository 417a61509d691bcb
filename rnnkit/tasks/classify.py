"""Sequence classification: labelled text or WAV manifests to a trained run, and a run to labels.

What is here: the batch source for whole sequences with one label each, the `classify` task (text:
CSV/TSV/JSONL/SST lines and a tokenizer; audio: a manifest, log-mel or MFCC features and a scaler fitted
on the training data; optionally the embeddings and encoder of a language-model run as the starting point;
scoring by accuracy, macro F1, per-class figures and the confusion matrix with its plot; answers as CSV or
JSONL, over HTTP and as an exported graph) and `classify` (probabilities for texts or WAV files from
Python). What is not: the network (models/classifier.py), the readers (data/tabular.py, data/audio.py),
the runner that trains and loads runs (training.py, runner.py) and the report arithmetic (metrics.py).

A run directory holds, besides what every run has: `labels.json` (the class names, in output order),
`tokenizer.json` for text runs, `scaler.json` (feature settings, mean and standard deviation) for audio.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from rnnkit.config import RunConfig, UserError
from rnnkit.data import (
    PAD_ID,
    UNK_ID,
    BucketedSource,
    Tokenizer,
    load_tokenizer,
    pad_sequences,
)
from rnnkit.data.audio import AudioItem, FeatureScaler, FeatureSpec, load_features, read_manifest
from rnnkit.data.split import hold_out
from rnnkit.data.tabular import LabelledText, check_labels, read_labelled, read_texts, texts_from_lines
from rnnkit.io import read_json, write_json, write_output
from rnnkit.metrics import classification_report
from rnnkit.models.classifier import SequenceClassifier
from rnnkit.tasks import runner
from rnnkit.tasks.base import (
    GraphModule,
    LoadedRun,
    Prepared,
    Say,
    Task,
    add_vector_words,
    check_size,
    extend_tokenizer,
    fit_tokenizer,
    initialise_from_lm,
    load_source_lm,
    source_record,
    start_embeddings,
    text_inputs,
)
from rnnkit.viz import write_confusion_plot

if TYPE_CHECKING:
    from rnnkit.serve.config import ServeConfig

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


# ------------------------------------------------------------------------------------- inputs


def _token_tensor(tokenizer: Tokenizer, text: str) -> torch.Tensor:
    ids = tokenizer.encode(text) or [UNK_ID]  # a text of symbols the tokenizer drops still gets one step
    return torch.tensor(ids, dtype=torch.long)


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


def _examples(cfg: RunConfig, path: str | Path, say: Say) -> list[tuple[Any, str, str]]:
    """(text or feature frames, label, where in the file) of every record of a labelled training file."""
    opts = cfg.options
    if opts.audio:
        features, items = _read_audio(path, _audio_spec(cfg), opts.skip_unreadable, say)
        return [(x, it.label, it.where) for x, it in zip(features, items, strict=True)]
    return [(r.text, r.label, r.where) for r in read_labelled(path, opts.text_column, opts.label_column)]


def _perturbed(cfg: RunConfig, train: list[tuple[Any, str, str]], path: str | Path, say: Say
               ) -> list[tuple[Any, str, str]]:
    """Extra training examples: each recording of `train` at every --speed-perturb speed and shifted by every
    --pitch-perturb step (speaker robustness)."""
    from rnnkit.data.audio import compute_features, load_wav, perturb

    spec = _audio_spec(cfg)
    speeds = [float(s) for s in cfg.options.speed_perturb.split(",") if s.strip() and float(s) != 1.0]
    steps = [float(p) for p in cfg.options.pitch_perturb.split(",") if p.strip() and float(p) != 0.0]
    items = {it.where: it for it in read_manifest(path)}
    extra = []
    for _, label, where in train:
        if where not in items:  # a held-out part's label, not a manifest row
            continue
        wave = load_wav(items[where].path, spec.sample_rate)
        for speed in speeds:
            extra.append((compute_features(perturb(wave, spec.sample_rate, speed=speed), spec), label, where))
        for step in steps:
            extra.append((compute_features(perturb(wave, spec.sample_rate, semitones=step), spec), label, where))
    say(f"--speed-perturb/--pitch-perturb: {len(extra)} perturbed copies added to the {len(train)} training "
        "recordings")
    return extra


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


@dataclass
class LoadedClassifier(LoadedRun):
    """A trained classifier with what turns inputs into its tensors: a tokenizer, or a scaler and the
    feature settings for audio runs."""

    labels: list[str]
    tokenizer: Tokenizer | None = None
    scaler: FeatureScaler | None = None
    spec: FeatureSpec | None = None

    @property
    def audio(self) -> bool:
        return self.scaler is not None


class ClassifyTask(Task):
    """A sequence in, one label out: sentiment and other text classes, spoken words and commands."""

    name = "classify"
    summary = "sequence classification: text (CSV/TSV/JSONL/SST lines) or audio (--audio, a WAV manifest)"
    loaded_type = LoadedClassifier

    # -------------------------------------------------------------------------------- training

    def prepare(self, cfg: RunConfig, train_path: str | Path, valid_path: str | Path | None, out: Path,
                resume: bool, say: Say) -> Prepared:
        opts, tc = cfg.options, cfg.train
        if opts.audio and opts.init_from:
            raise UserError("--init-from starts a text classifier from a language model; it does not apply to --audio")
        # Read everything first, so that a bad file stops the run before anything is written.
        train = _examples(cfg, train_path, say)
        if valid_path is not None:
            valid = _examples(cfg, valid_path, say)
        else:
            unit = "recordings" if opts.audio else "records"
            train, valid = hold_out(train, cfg.data.valid_fraction, "random", seed=tc.seed, source=str(train_path),
                                    unit=unit)
            say(f"no --valid given: holding out a random {cfg.data.valid_fraction:.0%} of {train_path} "
                f"({len(valid)} {unit}) for validation")
            if opts.audio:
                valid = [(x, y, "held-out part") for x, y, _ in valid]
        if opts.audio and (opts.speed_perturb or opts.pitch_perturb):
            train = train + _perturbed(cfg, train, train_path, say)
        train_x, train_y = [x for x, _, _ in train], [y for _, y, _ in train]
        valid_x = [x for x, _, _ in valid]

        labels = read_json(out / LABELS_FILE)["labels"] if resume else _sorted_labels(train_y)
        if len(labels) < 2:
            raise UserError(f"{train_path}: every record has the label {labels[0]!r}; classification needs at "
                            "least two classes")
        check_labels([(where, y) for _, y, where in valid], labels, valid_path or train_path)
        index = {label: i for i, label in enumerate(labels)}
        train_t = [index[y] for y in train_y]
        valid_t = [index[y] for _, y, _ in valid]

        assets: dict[str, Any] = {"labels": labels}
        state: dict[str, Any] = {}
        if opts.audio:
            spec = _audio_spec(cfg)
            scaler = FeatureScaler.load(out)[0] if resume else FeatureScaler.fit(train_x)
            train_in = [torch.from_numpy(scaler(x)) for x in train_x]
            valid_in = [torch.from_numpy(scaler(x)) for x in valid_x]
            assets.update(scaler=scaler, spec=spec)
            kind = f"audio {spec.kind} x{spec.size}"
        else:
            tokenizer = self._tokenizer(cfg, train_x, out, resume, state, say)
            train_in = [_token_tensor(tokenizer, t) for t in train_x]
            valid_in = [_token_tensor(tokenizer, t) for t in valid_x]
            assets["tokenizer"] = tokenizer
            kind = f"{tokenizer.kind} vocabulary {tokenizer.vocab_size}"
        if opts.class_weights:
            counts = np.bincount(train_t, minlength=len(labels)).astype(np.float64)
            assets["class_weights"] = torch.tensor(len(train_t) / (len(labels) * np.maximum(counts, 1)),
                                                   dtype=torch.float32)
        assets["freeze_embeddings"] = opts.freeze_embeddings

        train_src = SequenceSource(train_in, train_t, tc.batch_size, shuffle=True, seed=tc.seed)
        valid_src = SequenceSource(valid_in, valid_t, EVAL_BATCH, shuffle=False)
        m = cfg.model
        tokenizer = assets.get("tokenizer")
        return Prepared(
            train_src, valid_src, assets,
            describe=f"classifier: {m.cell} {m.num_layers}x{m.hidden_size}"
                     f"{' bidirectional' if m.bidirectional else ''}, {opts.pooling} pooling, {kind}, "
                     f"{len(labels)} classes, {{params}} parameters; {len(train_in)} training sequences, "
                     f"{len(train_src)} batches per epoch",
            meta={"labels": labels, "vocab_size": tokenizer.vocab_size if tokenizer else None,
                  **({"init_from": state["init_from"]} if "init_from" in state else {}),
                  "input_size": None if tokenizer else assets["spec"].size},
            state=state)

    def _tokenizer(self, cfg: RunConfig, texts: list[str], out: Path, resume: bool, state: dict[str, Any],
                   say: Say) -> Tokenizer:
        """The run's tokenizer: the saved one on resume, the language model's extended by the training words
        (--init-from: its model goes into `state` too, and its sizes into `cfg`), or one fitted on the texts
        (extended by the words of --embeddings: the vectors read go into `state`)."""
        opts = cfg.options
        if resume:
            return load_tokenizer(out)
        if opts.init_from:
            lm = load_source_lm(cfg, opts.init_from, "classify", say)
            tokenizer = extend_tokenizer(lm.tokenizer, texts, cfg.data.min_freq)
            say(f"--init-from {opts.init_from}: {lm.tokenizer.kind} vocabulary {lm.tokenizer.vocab_size} + "
                f"{tokenizer.vocab_size - lm.tokenizer.vocab_size} training words")
            if cfg.model.embeddings and tokenizer.kind in ("word", "space"):  # vectors for the words the LM lacks
                words, state["vectors"] = add_vector_words(tokenizer.tokens, cfg, say)
                tokenizer = type(tokenizer)(words)
            state["lm"] = lm
            state["init_from"] = source_record(opts.init_from)
            return tokenizer
        tokenizer = fit_tokenizer(cfg.data.tokenizer, texts, cfg)
        if cfg.model.embeddings and tokenizer.kind in ("word", "space"):
            words, state["vectors"] = add_vector_words(tokenizer.tokens, cfg, say)
            tokenizer = type(tokenizer)(words)
        return tokenizer

    def build_model(self, cfg: RunConfig, labels: list[str], tokenizer: Tokenizer | None = None,
                    spec: FeatureSpec | None = None, class_weights: torch.Tensor | None = None,
                    freeze_embeddings: bool = False) -> SequenceClassifier:
        """The classifier; `freeze_embeddings` (training only) keeps the embedding out of the optimizer."""
        model = build_model(cfg, len(labels), tokenizer.vocab_size if tokenizer else None,
                            spec.size if spec else None, class_weights)
        if freeze_embeddings and model.embedding is not None:
            model.embedding.weight.requires_grad_(False)
        return model

    def model_assets(self, assets: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in assets.items() if k != "scaler"}

    def initialise(self, model: nn.Module, cfg: RunConfig, prepared: Prepared, say: Say) -> None:
        tokenizer = prepared.assets.get("tokenizer")
        lm = prepared.state.get("lm")
        if lm is not None:
            words = [tokenizer.token_text(i) for i in range(tokenizer.vocab_size)]
            initialise_from_lm(model.embedding, model.rnn, words, lm, say, same_ids=lm.tokenizer.vocab_size)
        if cfg.model.embeddings:
            if model.embedding is None:
                raise UserError("--embeddings: audio runs read features, not words; drop the option")
            words = [tokenizer.token_text(i) for i in range(tokenizer.vocab_size)]
            # with --init-from, the language model's rows stay as it learnt them: vectors start the new rows
            keep = {"skip": lm.tokenizer.vocab_size} if lm is not None else {}
            start_embeddings(model.embedding, words, cfg, say, vectors=prepared.state.get("vectors"), **keep)

    def save(self, out: Path, prepared: Prepared) -> None:
        assets = prepared.assets
        write_json(out / LABELS_FILE, {"labels": assets["labels"]})
        if "tokenizer" in assets:
            assets["tokenizer"].save(out)
        if "scaler" in assets:
            assets["scaler"].save(out, assets["spec"])

    def check_test(self, cfg: RunConfig, test_path: str | Path, prepared: Prepared) -> None:
        opts = cfg.options
        if opts.audio:
            gold = [(it.where, it.label) for it in read_manifest(test_path)]
        else:
            gold = [(r.where, r.label) for r in read_labelled(test_path, opts.text_column, opts.label_column)]
        check_labels(gold, prepared.assets["labels"], test_path)

    def test_result(self, figures: dict[str, Any]) -> tuple[dict[str, Any], str]:
        return ({k: figures[k] for k in ("accuracy", "macro_f1", "count")},
                f"test: accuracy {figures['accuracy']:.4f} macro_f1 {figures['macro_f1']:.4f}")

    # ------------------------------------------------------------------------------ using a run

    def load_assets(self, run_dir: Path, cfg: RunConfig, meta: dict[str, Any]) -> dict[str, Any]:
        labels = read_json(run_dir / LABELS_FILE).get("labels")
        if not isinstance(labels, list) or len(labels) < 2:
            raise UserError(f"{run_dir / LABELS_FILE}: expected {{\"labels\": [two or more names]}}")
        if cfg.options.audio:
            scaler, spec = FeatureScaler.load(run_dir)
            return {"labels": labels, "scaler": scaler, "spec": spec}
        tokenizer = load_tokenizer(run_dir)
        check_size(run_dir, meta, "vocab_size", tokenizer.vocab_size, f"tokenizer has {tokenizer.vocab_size} tokens")
        return {"labels": labels, "tokenizer": tokenizer}

    def evaluate(self, run: LoadedClassifier, data_path: str | Path, plot: str | None = None) -> dict[str, Any]:
        """Accuracy, macro F1, per-class precision/recall/F1/support and the confusion matrix on labelled data.

        Args:
            run: the loaded run.
            data_path: labelled data in the run's format (text formats, or a manifest for audio runs).
            plot: where to write the confusion matrix as PNG, or None.
        """
        tensors, gold = labelled_inputs(run, data_path)
        probs = _probabilities(run, tensors)
        report = classification_report(gold, probs.argmax(axis=1).tolist(), run.labels)
        if plot:
            write_confusion_plot(plot, report["confusion"]["matrix"], run.labels,
                                 title=f"{Path(data_path).name}: accuracy {report['accuracy']:.1%}")
        return report

    def predict(self, run: LoadedClassifier, input_path: str | Path, output_path: str | Path,
                format: str | None = None) -> list[dict[str, Any]]:
        """Write the label and class probabilities of every input as CSV or JSONL.

        Inputs: text runs read a CSV/TSV/JSONL with the text column or plain text, one per line ("-" is
        standard input); audio runs read a manifest CSV with a `path` column, or one WAV path per line.
        `format` is `csv` or `jsonl`; by default it follows `output_path`'s extension, else CSV.
        """
        fmt = format or ("jsonl" if str(output_path).lower().endswith((".jsonl", ".json")) else "csv")
        if fmt not in ("csv", "jsonl"):
            raise UserError(f"--format {fmt}: expected csv or jsonl")
        opts = run.config.options
        if run.audio:
            items = _audio_items(input_path)
            tensors, kept = _audio_inputs(run, items, opts.skip_unreadable)
            shown = [str(it.path) for it in kept]
        else:
            if str(input_path) == "-":
                records: list[LabelledText] = texts_from_lines(sys.stdin)
            else:
                records = read_texts(input_path, opts.text_column, opts.label_column)
            tensors = _text_inputs(run, [r.text for r in records])
            shown = [r.text for r in records]
        probs = _probabilities(run, tensors)
        answers = [_answer(run, s, p) for s, p in zip(shown, probs, strict=True)]
        write_output(output_path, _format_answers(answers, run.labels, fmt))
        return answers

    # ------------------------------------------------------------------ serving, export, inspect

    def answer(self, run: LoadedClassifier, inputs: list[Any], config: ServeConfig) -> list[dict[str, Any]]:
        """The service's answers: texts only (audio runs take WAV files through `rnnkit predict`)."""
        if run.audio:
            raise UserError("inputs: this run classifies audio; the service takes text only "
                            "(use 'rnnkit predict' with a manifest of WAV files)")
        return classify(run, text_inputs(inputs, config.max_input_chars))

    def describe_run(self, run: LoadedClassifier) -> dict[str, Any]:
        return {"labels": list(run.labels), "audio": bool(run.audio)}

    def export_graphs(self, run: LoadedClassifier) -> list[Any]:
        """One graph: the inputs and their lengths to the class probabilities."""
        from rnnkit.export import Graph

        model = run.model.eval()

        def make(sizes: dict[str, int]) -> tuple[Tensor, ...]:
            B, T = sizes["B"], sizes["T"]
            if run.audio:
                x = torch.randn(B, T, run.spec.size)
            else:
                x = torch.randint(4, run.tokenizer.vocab_size, (B, T))
            lengths = torch.randint(1, T + 1, (B,))
            lengths[0] = T  # the longest row fills the batch, as in a padded batch
            return x, lengths

        return [Graph("classify", _ClassifyGraph(model), make({"B": 3, "T": 7}), ["inputs", "lengths"],
                      ["probabilities"], {"inputs": {0: "B", 1: "T"}, "lengths": {0: "B"}}, make,
                      check_sizes=[{"B": 1, "T": 1}, {"B": 5, "T": 19}])]

    def encoder_sequences(self, run: LoadedClassifier, data_path: str | Path
                          ) -> tuple[Any, list[Any], Callable[..., Any]]:
        """Every record of a labelled file, each step named by its token (text) or its frame number (audio);
        the loss is the class's cross-entropy, read after the last step."""
        from rnnkit.diagnostics import InspectSequence

        tensors, gold = labelled_inputs(run, data_path)
        found = []
        for x, y in zip(tensors, gold, strict=True):
            if run.tokenizer is not None:
                names = [run.tokenizer.token_text(int(i)) for i in x]
            else:
                names = [str(i) for i in range(x.shape[0])]  # audio frames
            found.append(InspectSequence({"inputs": x[None], "lengths": torch.tensor([x.shape[0]]),
                                          "targets": torch.tensor([y])}, names))

        def loss(batch: dict[str, Tensor]) -> Tensor:
            return run.model.loss(batch).loss

        return run.model.rnn, found, loss


TASK = ClassifyTask()


class _ClassifyGraph(GraphModule):
    """Export: inputs (B, T) token ids or (B, T, F) features, lengths (B,) -> class probabilities (B, C)."""

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        return (self.model(inputs[0], inputs[1]).softmax(dim=-1),)


# ------------------------------------------------------------------------------------ inference


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


def _audio_items(input_path: str | Path) -> list[AudioItem]:
    """The recordings `predict` reads: a manifest CSV, or one WAV path per line ("-": standard input)."""
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
    return items


def classify(run: str | Path | LoadedClassifier, inputs: Sequence[str]) -> list[dict[str, Any]]:
    """Label and probabilities for each text (text runs) or WAV path (audio runs).

    Args:
        run: a loaded classification run, or its run directory.
        inputs: texts, or paths of WAV files for audio runs.
    Returns:
        [{"input", "label", "probabilities": {label: p}}] in the order of `inputs`.
    """
    clf = runner.ensure_loaded(run, "classify")
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


def _format_answers(answers: list[dict[str, Any]], labels: list[str], fmt: str) -> str:
    if fmt == "jsonl":
        return "".join(json.dumps(a, ensure_ascii=False) + "\n" for a in answers)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["input", "label", *(f"p_{label}" for label in labels)])
    for a in answers:
        writer.writerow([a["input"], a["label"], *(f"{a['probabilities'][label]:.6f}" for label in labels)])
    return buf.getvalue()
