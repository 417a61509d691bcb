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

    # ------------------------------------------------------------------ serving, export, inspect

    generates_text: ClassVar[bool] = False
    """The service offers /generate and /complete (typing sessions) for this task's runs, not /predict."""

    answer: Callable[..., list[dict[str, Any]]] | None = None
    """`answer(run, inputs, config)`: the service's `POST /predict`, one JSON-ready answer per input
    (`config` is the service's `ServeConfig`: input limits)."""

    limits_input_chars: ClassVar[bool] = True  # the service bounds each text input (`--max-input-chars`)

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
