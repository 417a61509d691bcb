"""`POST /predict` for the tasks other than language modelling: JSON inputs in, JSON predictions out.

What is here: one function per task that takes a loaded run and the request's inputs and returns one
JSON-ready answer per input, in the form the web page draws (a label with its probabilities; tokens
with tags and entity spans; a translation with its attention map; a forecast with its history and
interval). What is not: loading runs or the models' work, which stay in the task modules.

Every text input is at most `config.max_input_chars` characters, which bounds the work and the answer
of one input (a translation's length follows its source's); a translation's attention map is sent only
up to `config.max_attention_cells` cells. A forecast input is a CSV of any length within the request's
size; only its last rows are read and sent back.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from rnnkit.config import UserError
from rnnkit.serve.config import ServeConfig


def _texts(inputs: list[Any], max_chars: int | None = None) -> list[str]:
    for i, x in enumerate(inputs):
        if not isinstance(x, str):
            raise UserError(f"inputs.{i}: expected a string; got {type(x).__name__}")
        if not x.strip():
            raise UserError(f"inputs.{i}: the text is empty")
        if max_chars is not None and len(x) > max_chars:
            raise UserError(f"inputs.{i}: the text has {len(x):,} characters; at most {max_chars:,} are accepted")
    return inputs


def classify(loaded: Any, inputs: list[Any], config: ServeConfig) -> list[dict[str, Any]]:
    from rnnkit.tasks import classify as task

    if loaded.audio:
        raise UserError("inputs: this run classifies audio; the service takes text only "
                        "(use 'rnnkit predict' with a manifest of WAV files)")
    return task.classify(loaded, _texts(inputs, config.max_input_chars))


def tag(loaded: Any, inputs: list[Any], config: ServeConfig) -> list[dict[str, Any]]:
    from rnnkit.data.conll import tokenize
    from rnnkit.tasks import tag as task

    records = []
    for line in _texts(inputs, config.max_input_chars):
        pieces = tokenize(line)
        records.append((line, [p[0] for p in pieces], [(p[1], p[2]) for p in pieces]))
    tags = loaded.tag([r[1] for r in records])
    out = []
    for (line, tokens, offsets), t in zip(records, tags, strict=True):
        answer: dict[str, Any] = {"text": line, "tokens": tokens, "tags": t, "offsets": offsets}
        if loaded.vocab.scheme != "none":
            answer["entities"] = task._entities(tokens, offsets, t, line)
        out.append(answer)
    return out


def seq2seq(loaded: Any, inputs: list[Any], config: ServeConfig, beam: int = 1) -> list[dict[str, Any]]:
    from rnnkit.tasks import seq2seq as task

    found = task.translate(loaded, _texts(inputs, config.max_input_chars), beam=beam, attention=True)
    out = []
    for source, t in zip(inputs, found, strict=True):
        answer: dict[str, Any] = {"input": source, "output": t.text, "source_tokens": t.source_units,
                                  "output_tokens": t.target_units}
        if t.attention is not None and t.attention.numel() <= config.max_attention_cells:
            answer["attention"] = [[round(float(w), 4) for w in row] for row in t.attention.tolist()]
        out.append(answer)
    return out


def forecast(loaded: Any, inputs: list[Any], config: ServeConfig) -> list[dict[str, Any]]:
    """Each input is the text of a CSV file with the run's columns; the answer forecasts past its end."""
    from rnnkit.data.series import future_times
    from rnnkit.tasks import forecast as task

    out = []
    L, H = loaded.config.options.lookback, loaded.config.options.horizon
    names = loaded.meta["target"]
    for i, text in enumerate(_texts(inputs)):
        buf = io.StringIO(text)
        buf.name = f"inputs.{i}"
        try:
            series = task.read_for_run(loaded, buf)
        except UserError as e:
            raise UserError(f"inputs.{i}: {e}") from None
        if len(series) < L:
            raise UserError(f"inputs.{i}: {len(series)} rows; the run reads {L} rows of history")
        found = task.forecast(loaded, series, np.array([len(series)]))
        step = loaded.meta["step"]
        if series.is_datetime:
            import pandas as pd

            step = pd.Timedelta(seconds=step)
        ahead = future_times(series.times, H, step)
        keep = min(len(series), max(L, 3 * H))
        answer: dict[str, Any] = {
            "target": names[0],
            "times": [str(t) for t in ahead],
            "history": [float(v) for v in series.targets[-keep:, 0]],
            "forecast": [float(v) for v in found["point"][0, :, 0]],
            "series": {name: [float(v) for v in found["point"][0, :, c]] for c, name in enumerate(names)},
        }
        if "lower" in found:
            answer["lower"] = [float(v) for v in found["lower"][0, :, 0]]
            answer["upper"] = [float(v) for v in found["upper"][0, :, 0]]
        out.append(answer)
    return out


PREDICTORS = {"classify": classify, "tag": tag, "seq2seq": seq2seq, "forecast": forecast}
