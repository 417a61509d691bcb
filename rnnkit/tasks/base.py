"""The task interface: what a task says about itself, and the run it loads.

A task is one object, a subclass of `Task`, that says what is its own: how to read its files and hold
out validation data, which vocabularies or scalers it fits and keeps in the run directory, how to build
its model, how to score a run, and how to answer inputs (on the command line, over HTTP, in an exported
graph, under `inspect`). Everything else is done once for all tasks by the runner: `training.train`
(open the run, write config.json on rank 0, count parameters, run the Trainer, score --test) and
`runner.load` / `runner.evaluate` / `runner.predict` (read config.json, rebuild the model, load the
weights, put it on its device).

What is not here: the loop (train.py), the models (models/), the readers (data/), the registry (tasks/__init__.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from rnnkit.config import RunConfig, UserError
from rnnkit.data import SPECIAL_TOKENS, Tokenizer, build_tokenizer

Say = Callable[[str], None]


@dataclass
class LoadedRun:
    """A trained run, ready to use: its model in eval mode on `device` and what it was made from.

    Tasks subclass it to add what they keep beside the weights (a tokenizer, labels, a scaler); the
    runner fills those fields from `Task.load_assets`.
    """

    model: nn.Module
    config: RunConfig
    device: torch.device
    run_dir: Path
    meta: dict[str, Any]


@dataclass
class Prepared:
    """What a task hands the training runner after reading its data.

    Attributes:
        train, valid: batch sources (evaluation.BatchSource): `__len__`, `batches(epoch, start)`, `stateful`.
        assets: what the task fitted on the training data (vocabularies, labels, scalers): the keyword
            arguments of `Task.build_model`, and the fields its loaded run adds to `LoadedRun`.
        describe: the line shown before training; `{params}` in it becomes the parameter count.
        meta: keys that config.json holds beside the configuration (sizes a loader checks).
        result: figures added to what `train` returns.
        state: anything else of the task's own that `Task.save` or `Task.after_training` needs.
    """

    train: Any
    valid: Any
    assets: dict[str, Any]
    describe: str
    meta: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)


class Task:
    """One kind of problem, end to end. Subclasses set the class attributes and override the hooks."""

    name: ClassVar[str]  # the registry's key, config.json's "task"
    summary: ClassVar[str]  # one line for `rnnkit train --help`
    loaded_type: ClassVar[type[LoadedRun]] = LoadedRun
    # The Python names of `evaluate`'s and `predict`'s task-specific options: they come from
    # the methods' own signatures (see `runner.option_names`).

    # -------------------------------------------------------------------------------- training

    def prepare(self, cfg: RunConfig, train_path: str | Path, valid_path: str | Path | None, out: Path,
                resume: bool, say: Say) -> Prepared:
        """Read the training (and validation) data, fit or (on resume) reload what the task keeps, and make
        the batch sources. Everything that can be checked is checked here, before anything is written."""
        raise NotImplementedError

    def build_model(self, cfg: RunConfig, **assets: Any) -> nn.Module:
        """The task's network for a configuration and the fitted assets."""
        raise NotImplementedError

    def initialise(self, model: nn.Module, cfg: RunConfig, prepared: Prepared, say: Say) -> None:
        """A new run's starting weights beyond the random ones (pre-trained vectors, another run's weights)."""

    def save(self, out: Path, prepared: Prepared) -> None:
        """Write the task's own files into a new run directory (rank 0 only, before training)."""

    def check_test(self, cfg: RunConfig, test_path: str | Path, prepared: Prepared) -> None:
        """Refuse a bad --test file before training rather than after it."""

    def after_training(self, out: Path, prepared: Prepared, say: Say) -> None:
        """Work on the best weights in `out` once training is over (rank 0 only), before --test is scored."""

    def test_result(self, figures: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """What of `evaluate`'s figures on --test goes into the training result, and the line to show."""
        return figures, "test: " + " ".join(f"{k} {v:.4f}" for k, v in figures.items() if isinstance(v, float))

    # ------------------------------------------------------------------------------ using a run

    def load_assets(self, run_dir: Path, cfg: RunConfig, meta: dict[str, Any]) -> dict[str, Any]:
        """Read and check what the run keeps beside its weights; returns `build_model`'s keyword arguments
        (and the extra fields of `loaded_type`)."""
        return {}

    def model_assets(self, assets: dict[str, Any]) -> dict[str, Any]:
        """The part of `assets` that `build_model` takes (by default all of it)."""
        return assets

    def evaluate(self, run: LoadedRun, data_path: str | Path, **options: Any) -> dict[str, Any]:
        """Score a run on a data file; the figures `rnnkit evaluate --json` prints."""
        raise NotImplementedError

    predict: Callable[..., Any] | None = None
    """`predict(run, input_path, output_path, **options)`: write answers for inputs; None where the task
    answers another way (`lm`: generate, complete)."""

    predict_hint: ClassVar[str] = ""  # said when `rnnkit predict` does not apply

    compose: Callable[..., dict[str, Any]] | None = None
    """`compose(run, out, **options, say=...)`: `rnnkit generate` for a task that writes a file rather than text
    (music: a MIDI file); returns what was written. None: `generate` is for text (`generates_text`)."""

    # ------------------------------------------------------------------ serving, export, inspect

    generates_text: ClassVar[bool] = False
    """The service offers /generate and /complete (typing sessions) for this task's runs, not /predict."""

    answer: Callable[..., list[dict[str, Any]]] | None = None
    """`answer(run, inputs, config)`: the service's `POST /predict`, one JSON-ready answer per input
    (`config` is the service's `ServeConfig`: input limits)."""

    limits_input_chars: ClassVar[bool] = True  # the service bounds each text input (`--max-input-chars`)
    page: ClassVar[str] = "index.html"  # the service's web page for this task's runs (serve/static/)

    streams_audio: ClassVar[bool] = False
    """The service offers `POST /transcribe` (through `transcribe_samples(run, samples) -> {"text", ...}`) and
    the audio stream `/transcribe/stream` (through `open_stream(run)`: an object with `push(samples) -> text so
    far` and `finish() -> text`); serve/speech.py."""

    def add_routes(self, app: Any, run: LoadedRun, config: Any) -> None:
        """Add the task's own endpoints to the service's FastAPI `app` (beyond /predict); none by default."""

    def describe_run(self, run: LoadedRun) -> dict[str, Any]:
        """What the service's /info and web page show about a run beyond its network."""
        return {}

    def export_graphs(self, run: LoadedRun) -> list[Any]:
        """The modules `rnnkit export` writes (export.Graph: a module, example inputs, the names of its
        free dimensions)."""
        raise UserError(f"{run.run_dir}: export does not support {self.name} runs yet")

    def export_extras(self, run: LoadedRun) -> dict[str, Any]:
        """What a consumer of the exported graphs needs besides them (written to export.json)."""
        return {}

    def inspect(self, run: LoadedRun, data_path: str | Path, out: Path, steps: int, rows: int) -> dict[str, Any]:
        """`rnnkit inspect`: gradient flow through time and activations; writes plots into `out` and returns
        the figures. By default through the task's recurrent encoder (`encoder_sequences`)."""
        from rnnkit.diagnostics import inspect_encoder

        layer, sequences, loss_of = self.encoder_sequences(run, data_path)
        if not sequences:
            raise UserError(f"{data_path}: no sequence to inspect")
        return inspect_encoder(self.name, run, layer, sequences, loss_of, out, rows=rows, spread=self.inspect_spread)

    inspect_spread: ClassVar[bool] = False  # inspect windows spread over the data rather than the longest

    def encoder_sequences(self, run: LoadedRun, data_path: str | Path) -> tuple[Any, list[Any], Callable[..., Any]]:
        """For `inspect`: the recurrent encoder (layers.Recurrent), the sequences of a data file
        (diagnostics.InspectSequence: a batch of one row and a label per step), and the loss of one batch."""
        raise UserError(f"{run.run_dir}: inspect does not know {self.name} runs")


# ------------------------------------------------------------------------------------- shared pieces


class GraphModule(nn.Module):
    """A task model wrapped for export: `forward(*tensors)` returns a tuple of tensors (`Task.export_graphs`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model


def fit_tokenizer(kind: str, texts: Iterable[str], cfg: RunConfig) -> Tokenizer:
    """A tokenizer of `kind` fitted on texts with the run's vocabulary options."""
    d = cfg.data
    options: dict[str, Any] = {}
    if kind in ("word", "space"):
        options = {"min_freq": d.min_freq, "max_vocab": d.max_vocab}
    elif kind == "bpe":
        options = {"vocab_size": d.vocab_size}
    return build_tokenizer(kind, "\n".join(texts), **options)


def start_embeddings(embedding: nn.Embedding, words: Sequence[str], cfg: RunConfig, say: Say, unit: str = "words",
                     vectors: tuple[dict[str, Any], int] | None = None, skip: int = len(SPECIAL_TOKENS)) -> None:
    """Copy the --embeddings vectors of `words` (in id order) into the embedding's rows; the rest keep their
    random values. `vectors` is the file already read (`read_vectors`), if it was."""
    from rnnkit.data.vectors import embedding_matrix, read_vectors

    if cfg.model.embeddings is None:
        return
    table, dim = vectors or read_vectors(cfg.model.embeddings, list(words[skip:]))
    matrix, found = embedding_matrix(list(words), table, dim, base=embedding.weight.detach().numpy(), skip=skip)
    with torch.no_grad():
        embedding.weight.copy_(torch.from_numpy(matrix))
    say(f"--embeddings {cfg.model.embeddings}: {found:,} of {len(words) - skip:,} {unit} start from a pre-trained "
        "vector")


def check_size(run_dir: Path, meta: dict[str, Any], key: str, found: int, said: str) -> None:
    """Refuse a run whose kept file disagrees with a size config.json recorded under `key`; `said` tells what
    the file has ("tokenizer has 45 tokens")."""
    expected = meta.get(key)
    if expected not in (None, found):
        raise UserError(f"{run_dir}: {said}, config says {expected}")


def add_vector_words(words: Sequence[str], cfg: RunConfig, say: Say, key: Callable[[str], str] | None = None
                     ) -> tuple[list[str], tuple[dict[str, Any], int]]:
    """`words` (a vocabulary in id order) followed by the --embeddings file's words it lacks, and the file read.

    Words with a pre-trained vector join the vocabulary even when training never shows them, so that a test
    sentence's unseen words still carry meaning (most of all with frozen vectors). `key` maps a word of the
    file to the vocabulary's form of it (lower-casing, say). The file read goes on to `start_embeddings`.
    """
    from rnnkit.data.vectors import read_vectors

    vectors = read_vectors(cfg.model.embeddings)
    known = set(words)
    new = [w for w in dict.fromkeys(key(w) if key else w for w in vectors[0]) if w not in known]
    say(f"--embeddings: {len(new):,} words of the vectors file added to the {len(words):,} of the training data")
    return [*words, *new], vectors


def text_inputs(inputs: list[Any], max_chars: int | None = None) -> list[str]:
    """The service's text inputs, checked: each a non-empty string of at most `max_chars` characters; a
    mistake names the input (`inputs.N`)."""
    for i, x in enumerate(inputs):
        if not isinstance(x, str):
            raise UserError(f"inputs.{i}: expected a string; got {type(x).__name__}")
        if not x.strip():
            raise UserError(f"inputs.{i}: the text is empty")
        if max_chars is not None and len(x) > max_chars:
            raise UserError(f"inputs.{i}: the text has {len(x):,} characters; at most {max_chars:,} are accepted")
    return inputs


def source_record(run_dir: str | Path) -> dict[str, Any]:
    """Where a run's starting weights came from, as its config.json records it (`init_from`): the source run's
    directory and the SHA-256 of that run's config.json, so a later reader can tell whether the source has
    changed since."""
    import hashlib

    from rnnkit.checkpoint import CONFIG_FILE

    data = (Path(run_dir) / CONFIG_FILE).read_bytes()
    return {"run": str(run_dir), "config_sha256": hashlib.sha256(data).hexdigest()}


STRUCTURE = ("cell", "embedding_size", "hidden_size", "num_layers", "tie_weights", "adaptive_softmax")


def check_structure(cfg: RunConfig, source: RunConfig, source_dir: str | Path, names: Sequence[str],
                    default: RunConfig) -> None:
    """Take a source run's model structure into `cfg`, refusing what the user set otherwise.

    A field of `names` that still holds the task's default follows the source run; one the user changed and
    that differs from the source is a one-line error saying what differs.
    """
    from rnnkit.config import ModelConfig, flag_of

    differ = []
    for name in names:
        ours, theirs, plain = (getattr(c.model, name) for c in (cfg, source, default))
        if ours != theirs and ours != plain:
            differ.append(f"{flag_of(ModelConfig, name)} {ours} (the run has {theirs})")
        setattr(cfg.model, name, theirs)
    if differ:
        raise UserError(f"--init-from {source_dir}: the sizes must match the language model's: " + "; ".join(differ)
                        + "; drop these options to take the run's own")


def load_source_lm(cfg: RunConfig, run_dir: str | Path, task: str, say: Say, one_direction: bool = True) -> Any:
    """A language-model run whose embedding and recurrent layers start another task's encoder.

    The encoder takes the run's cell, sizes, layer count and tokenizer kind, reads left to right (a
    language model has one direction; with `one_direction` False a bidirectional encoder stays so, its forward
    direction from the run) and refuses a backward run; options the user set otherwise are a
    one-line error saying what differs.
    """
    from rnnkit.tasks import runner

    lm = runner.load(run_dir, task="lm")
    check_structure(cfg, lm.config, run_dir, ("cell", "embedding_size", "hidden_size", "num_layers"),
                    RunConfig.create(task))
    if lm.config.options is not None and lm.config.options.reverse:
        raise UserError(f"--init-from {run_dir}: a backward (--reverse) language model cannot start an encoder "
                        "that reads left to right; give a forward run")
    plain = RunConfig.create(task).data.tokenizer
    if cfg.data.tokenizer not in (plain, lm.tokenizer.kind):
        raise UserError(f"--init-from {run_dir}: --tokenizer {cfg.data.tokenizer} differs from the language "
                        f"model's {lm.tokenizer.kind}; drop --tokenizer to take the run's own")
    cfg.data.tokenizer = lm.tokenizer.kind
    if cfg.model.bidirectional and one_direction:
        say(f"--init-from {run_dir}: the encoder reads left to right, as the language model does "
            "(not bidirectional)")
        cfg.model.bidirectional = False
    m = lm.config.model
    say(f"--init-from {run_dir}: {m.cell} {m.num_layers}x{m.hidden_size}, embeddings {m.embedding_size}, taken "
        "from the language model")
    return lm


def extend_tokenizer(base: Tokenizer, texts: list[str], min_freq: int) -> Tokenizer:
    """A word/space tokenizer holding `base`'s tokens (same ids) and then the new words of `texts` (those seen
    at least `min_freq` times); other kinds (characters, bytes, BPE) already spell every text: `base` itself."""
    from collections import Counter

    if base.kind not in ("word", "space"):
        return base
    known = set(base.tokens)
    split = type(base).split  # type: ignore[attr-defined]
    counts = Counter(t for text in texts for t in split(text) if t not in known and t != "<unk>")
    new = sorted((t for t, n in counts.items() if n >= min_freq), key=lambda t: (-counts[t], t))
    return type(base)([*base.tokens, *new])  # type: ignore[call-arg]


def initialise_from_lm(embedding: nn.Embedding, rnn: nn.Module, words: Sequence[str], lm: Any, say: Say,
                       same_ids: int = 0, skip: int | None = None) -> None:
    """Start an encoder's embedding and recurrent layers from a language-model run.

    Rows below `same_ids` are the language model's own tokens (an extended tokenizer keeps their ids) and are
    copied as they are. Every other row (from `skip`, the task's special rows before it) looks its word up in
    the language model: as written, then capitalised, title-cased, upper-cased or lower-cased ("paris" from
    "Paris"); a word it lacks starts from the mean of the language model's token embeddings (ULMFiT's choice:
    an average word, not noise). Recurrent tensors are copied where name and shape fit: a bidirectional
    encoder takes the forward direction; a first layer that reads more than the embedding (word shapes,
    characters) takes the language model's input weights in the columns that read the embedding, which come
    first.
    """
    lm_emb = lm.model.embedding.weight.detach()
    specials = len(SPECIAL_TOKENS)
    skip = specials if skip is None else skip
    lookup = lm.tokenizer.encode
    found = fallback = 0
    with torch.no_grad():
        rows = min(same_ids, embedding.weight.shape[0])
        if rows:
            embedding.weight[:rows].copy_(lm_emb[:rows])
        mean = lm_emb[specials:].mean(0)
        for i in range(max(rows, skip), len(words)):
            word = words[i]
            for variant in dict.fromkeys((word, word.capitalize(), word.title(), word.upper(), word.lower())):
                ids = lookup(variant)
                if len(ids) == 1 and ids[0] >= specials:
                    embedding.weight[i].copy_(lm_emb[ids[0]])
                    found += 1
                    break
            else:
                embedding.weight[i].copy_(mean)
                fallback += 1
        if embedding.padding_idx is not None:
            embedding.weight[embedding.padding_idx].zero_()
        ours = dict(rnn.named_parameters())
        copied, partial = [], []
        for name, p in lm.model.rnn.named_parameters():
            mine = ours.get(name)
            if mine is None:
                continue
            if mine.shape == p.shape:
                mine.copy_(p)
                copied.append(name)
            elif p.dim() == 2 and mine.shape[0] == p.shape[0] and mine.shape[1] > p.shape[1] and name.endswith("l0"):
                mine[:, :p.shape[1]].copy_(p)
                partial.append(name)
    layers = ", ".join(sorted({n.rsplit("_", 1)[-1] for n in copied + partial}))
    say(f"initialised from the language model: {rows} embedding rows as they are, {found} words found in it, "
        f"{fallback} from its mean embedding; {len(copied)} recurrent tensors ({layers})"
        + (f", and the embedding's columns of {', '.join(partial)}" if partial else ""))
