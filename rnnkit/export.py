"""Export a trained run to ONNX or a `torch.export` program (.pt2), with a parity check.

What is here: `Graph` (one module to export with example inputs and the names of its dimensions),
the graphs of a language model (the whole sequence with state in and out, and one step for streaming
generation), and `export_run`, which exports every graph of a run, runs the result (onnxruntime for
ONNX, torch.export.load for .pt2) on inputs of sizes other than the traced ones, and reports the
largest difference from PyTorch. What is not: the models themselves.

Recurrent layers switch to a scan operator while a graph is captured (`Recurrent.export_mode`), so
the batch size and the sequence length stay free in the exported graph for every cell, fused or not.
TorchScript is not used: it is deprecated in torch 2.13.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.checkpoint import read_run_config
from rnnkit.config import UserError
from rnnkit.io import atomic_write
from rnnkit.layers import Recurrent

FORMATS = ("onnx", "pt2")
TOLERANCE = 1e-4


@dataclass
class Graph:
    """One module to export.

    Attributes:
        name: file stem (`sequence`, `step`, ...).
        module: the module; its forward takes `*inputs` (plain tensors) and returns a tuple of tensors.
        inputs: example inputs, one per input name.
        input_names, output_names: names in the exported graph.
        dims: per input name, {axis: dimension name}; inputs sharing a name share the dimension.
        make_inputs: given {dimension name: size}, fresh inputs for the parity check.
        check_sizes: the sizes the parity check runs the exported graph at (others than the traced ones).
        smallest: per dimension name, its smallest size when above 1.
    """

    name: str
    module: nn.Module
    inputs: tuple[Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    dims: dict[str, dict[int, str]]
    make_inputs: Callable[[dict[str, int]], tuple[Tensor, ...]]
    check_sizes: list[dict[str, int]] = field(default_factory=lambda: [{"B": 1, "T": 1}, {"B": 5, "T": 23}])
    smallest: dict[str, int] = field(default_factory=dict)


@contextlib.contextmanager
def exportable(module: nn.Module) -> Iterator[None]:
    """Put every Recurrent layer inside `module` into export mode (a scan over time) for the duration."""
    layers = [m for m in module.modules() if isinstance(m, Recurrent)]
    was = [m.export_mode for m in layers]
    for m in layers:
        m.export_mode = True
    try:
        yield
    finally:
        for m, w in zip(layers, was, strict=True):
            m.export_mode = w


# ------------------------------------------------------------------------------ language models


class _LMSequence(nn.Module):
    """tokens (B, T) and the state parts (L, B, H) -> logits (B, T, V) and the new state parts."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        tokens, state = inputs[0], inputs[1:]
        logits, new = self.model(tokens, state if len(state) > 1 else state[0])
        return (logits, *(new if isinstance(new, tuple) else (new,)))


class _LMStep(nn.Module):
    """token (B,) and the state parts -> logits (B, V) for the next token and the new state parts."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        token, state = inputs[0], inputs[1:]
        logits, new = self.model.step(token, state if len(state) > 1 else state[0])
        return (logits, *(new if isinstance(new, tuple) else (new,)))


def lm_graphs(run_dir: str | Path) -> list[Graph]:
    from rnnkit.tasks import lm

    loaded = lm.load(run_dir)
    model = loaded.model.eval()
    rnn = model.rnn
    V, L, H = loaded.tokenizer.vocab_size, rnn.num_layers, rnn.hidden_size
    names = ["h", "c"][: rnn.num_states]

    def state(B: int) -> tuple[Tensor, ...]:
        return tuple(torch.randn(L, B, H) * 0.5 for _ in names)

    def seq_inputs(sizes: dict[str, int]) -> tuple[Tensor, ...]:
        return (torch.randint(0, V, (sizes["B"], sizes["T"])), *state(sizes["B"]))

    def step_inputs(sizes: dict[str, int]) -> tuple[Tensor, ...]:
        return (torch.randint(0, V, (sizes["B"],)), *state(sizes["B"]))

    state_dims = {n: {1: "B"} for n in names}
    return [
        Graph("sequence", _LMSequence(model), seq_inputs({"B": 3, "T": 7}), ["tokens", *names],
              ["logits", *[n + "_out" for n in names]], {"tokens": {0: "B", 1: "T"}, **state_dims}, seq_inputs),
        Graph("step", _LMStep(model), step_inputs({"B": 3}), ["token", *names],
              ["logits", *[n + "_out" for n in names]], {"token": {0: "B"}, **state_dims}, step_inputs,
              check_sizes=[{"B": 1}, {"B": 6}]),
    ]


# ----------------------------------------------------------------------------- the other tasks


class _Classify(nn.Module):
    """inputs (B, T) token ids or (B, T, F) features, lengths (B,) -> class probabilities (B, C)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        return (self.model(inputs[0], inputs[1]).softmax(dim=-1),)


def classify_graphs(run_dir: str | Path) -> list[Graph]:
    from rnnkit.tasks import classify

    loaded = classify.load(run_dir)
    model = loaded.model.eval()

    def make(sizes: dict[str, int]) -> tuple[Tensor, ...]:
        B, T = sizes["B"], sizes["T"]
        if loaded.audio:
            x = torch.randn(B, T, loaded.spec.size)
        else:
            x = torch.randint(4, loaded.tokenizer.vocab_size, (B, T))
        lengths = torch.randint(1, T + 1, (B,))
        lengths[0] = T  # the longest row fills the batch, as in a padded batch
        return x, lengths

    return [Graph("classify", _Classify(model), make({"B": 3, "T": 7}), ["inputs", "lengths"], ["probabilities"],
                  {"inputs": {0: "B", 1: "T"}, "lengths": {0: "B"}}, make,
                  check_sizes=[{"B": 1, "T": 1}, {"B": 5, "T": 19}])]


class _TagEmissions(nn.Module):
    """words, shapes (B, T), chars (B, T, C), lengths (B,) -> tag scores (B, T, K)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        words, shapes, chars, lengths = inputs
        return (self.model.emissions({"words": words, "shapes": shapes, "chars": chars, "lengths": lengths}),)


def tag_graphs(run_dir: str | Path) -> list[Graph]:
    """The tag scores per token; with a CRF, its transition scores go to crf.json for Viterbi outside."""
    from rnnkit.tasks import tag

    loaded = tag.load(run_dir)
    model = loaded.model.eval()
    V, chars_v = len(loaded.vocab.words), len(loaded.vocab.chars)

    def make(sizes: dict[str, int]) -> tuple[Tensor, ...]:
        B, T, C = sizes["B"], sizes["T"], sizes.get("C", 6)
        lengths = torch.randint(1, T + 1, (B,))
        lengths[0] = T
        mask = torch.arange(T)[None] < lengths[:, None]  # (B, T)
        words = torch.randint(2, V, (B, T)) * mask
        shapes = torch.randint(1, 4, (B, T)) * mask
        chars = torch.randint(2, chars_v, (B, T, C)) * mask[..., None]
        return words, shapes, chars, lengths

    graphs = [Graph("emissions", _TagEmissions(model), make({"B": 3, "T": 7, "C": 5}),
                    ["words", "shapes", "chars", "lengths"], ["emissions"],
                    {"words": {0: "B", 1: "T"}, "shapes": {0: "B", 1: "T"}, "chars": {0: "B", 1: "T", 2: "C"},
                     "lengths": {0: "B"}}, make,
                    check_sizes=[{"B": 1, "T": 2, "C": 3}, {"B": 4, "T": 13, "C": 9}])]
    return graphs


class _Seq2SeqEncoder(nn.Module):
    """source (B, S), lengths (B,) -> the decoder's first state: rnn parts, feed, memory, keys, mask."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        state = self.model.encode(inputs[0], inputs[1])
        rnn = state.rnn if isinstance(state.rnn, tuple) else (state.rnn,)
        keys = state.prepared if state.prepared is not None else state.memory
        return (*rnn, state.feed, state.memory, keys, state.mask)


class _Seq2SeqStep(nn.Module):
    """One decoder step: tokens (B,) and the state -> logits (B, Vt) and the new rnn parts and feed."""

    def __init__(self, model: nn.Module, num_states: int) -> None:
        super().__init__()
        self.model, self.num_states = model, num_states

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        from rnnkit.models.seq2seq import Seq2SeqState

        k = self.num_states
        tokens, rnn, (feed, memory, keys, mask) = inputs[0], inputs[1:1 + k], inputs[1 + k:]
        prepared = keys if self.model.attention is not None else None
        state = Seq2SeqState(rnn if k > 1 else rnn[0], feed, memory, prepared, mask)
        logits, new = self.model.step(tokens, state)
        parts = new.rnn if isinstance(new.rnn, tuple) else (new.rnn,)
        return (logits, *parts, new.feed)


def seq2seq_graphs(run_dir: str | Path) -> list[Graph]:
    """An encoder graph and a one-step decoder graph; greedy or beam search runs them step by step."""
    from rnnkit.tasks import seq2seq

    loaded = seq2seq.load(run_dir)
    model = loaded.model.eval()
    k = model.decoder.num_states
    rnn_names = ["h", "c"][:k]
    Vs, Vt = loaded.source_tokenizer.vocab_size, loaded.target_tokenizer.vocab_size

    def make_source(sizes: dict[str, int]) -> tuple[Tensor, ...]:
        B, S = sizes["B"], sizes["S"]
        lengths = torch.randint(1, S + 1, (B,))
        lengths[0] = S
        return torch.randint(4, Vs, (B, S)), lengths

    def make_step(sizes: dict[str, int]) -> tuple[Tensor, ...]:
        with torch.no_grad():
            state = _Seq2SeqEncoder(model)(*make_source(sizes))
        return (torch.randint(4, Vt, (sizes["B"],)), *state)

    state_names = [*rnn_names, "feed", "memory", "keys", "mask"]
    S_axis = 1
    dims_state = {n: {1: "B"} for n in rnn_names} | {"feed": {0: "B"}, "memory": {0: "B", S_axis: "S"},
                                                     "keys": {0: "B", S_axis: "S"}, "mask": {0: "B", S_axis: "S"}}
    if model.attention is None:  # the fixed context vector: one memory slot whatever the source length
        dims_state = {n: {1: "B"} for n in rnn_names} | {"feed": {0: "B"}, "memory": {0: "B"}, "keys": {0: "B"},
                                                         "mask": {0: "B"}}
    return [
        Graph("encoder", _Seq2SeqEncoder(model), make_source({"B": 3, "S": 7}), ["source", "lengths"], state_names,
              {"source": {0: "B", 1: "S"}, "lengths": {0: "B"}}, make_source,
              check_sizes=[{"B": 1, "S": 1}, {"B": 4, "S": 15}]),
        Graph("decoder_step", _Seq2SeqStep(model, k), make_step({"B": 3, "S": 7}), ["tokens", *state_names],
              ["logits", *[n + "_out" for n in rnn_names], "feed_out"], {"tokens": {0: "B"}, **dims_state}, make_step,
              check_sizes=[{"B": 1, "S": 1}, {"B": 4, "S": 15}]),
    ]


class _Forecast(nn.Module):
    """history (B, L, F), calendar of the steps ahead (B, H, K) -> distribution parameters (B, H, C, P).

    L is free: the encoder reads a history of any length (the run was trained on --lookback rows; a level
    'season' model needs at least one season of them). H is the run's --horizon, fixed by the output layer.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        return (self.model(inputs[0], inputs[1]),)


def forecast_graphs(run_dir: str | Path) -> list[Graph]:
    """In the model's scaled units (scaler.json holds the scaling); the history length is free, the horizon
    is the run's."""
    from rnnkit.tasks import forecast

    loaded = forecast.load(run_dir)
    model = loaded.model.eval()
    o = loaded.config.options
    F_in, K = loaded.meta["input_size"], len(loaded.meta["calendar"])
    shortest = model.season if model.level == "season" else 1

    def make(sizes: dict[str, int]) -> tuple[Tensor, ...]:
        return torch.randn(sizes["B"], sizes["L"], F_in), torch.randn(sizes["B"], o.horizon, K)

    traced = max(o.lookback, shortest + 2)  # a size the checks below do not use
    return [Graph("forecast", _Forecast(model), make({"B": 3, "L": traced}), ["history", "future"], ["params"],
                  {"history": {0: "B", 1: "L"}, "future": {0: "B"}}, make,
                  check_sizes=[{"B": 1, "L": shortest}, {"B": 6, "L": traced + 9}], smallest={"L": shortest})]


# --------------------------------------------------------------------------------------- export


def _dynamic_shapes(graph: Graph) -> dict[str, tuple[dict[int, Any], ...]]:
    dims: dict[str, Any] = {}
    out = []
    for name in graph.input_names:
        spec = {}
        for axis, dim in graph.dims.get(name, {}).items():
            if dim not in dims:
                dims[dim] = torch.export.Dim(dim, min=graph.smallest.get(dim, 1), max=1 << 20)
            spec[axis] = dims[dim]
        out.append(spec)
    return {"inputs": tuple(out)}


def _quietly(fn: Callable[[], Any]) -> Any:
    """Run an exporter with its progress lines and advisory warnings kept off the user's terminal."""
    buf = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
        warnings.simplefilter("ignore")
        return fn()


def export_graph(graph: Graph, fmt: str, path: Path) -> Path:
    """Export one graph to `path` (.onnx or .pt2)."""
    module = graph.module.eval()
    shapes = _dynamic_shapes(graph)
    # Not under no_grad: torch 2.13 specialises the batch size of a scan traced there.
    with exportable(module):
        if fmt == "pt2":
            program = _quietly(lambda: torch.export.export(module, graph.inputs, dynamic_shapes=shapes))
            buf = io.BytesIO()
            torch.export.save(program, buf)
            atomic_write(path, buf.getvalue())
        else:
            try:
                import onnxscript  # noqa: F401  (the ONNX exporter of torch 2.13 needs it)
            except ImportError as e:
                raise UserError(f"--format onnx needs the onnx and onnxscript packages ({e}); "
                                "pip install 'rnnkit[export]'") from None
            program = _quietly(lambda: torch.onnx.export(
                module, graph.inputs, dynamo=True, dynamic_shapes=shapes, input_names=graph.input_names,
                output_names=graph.output_names, optimize=True))
            tmp = path.with_name(path.name + ".tmp")
            program.save(str(tmp))
            tmp.replace(path)
    return path


def check_graph(graph: Graph, fmt: str, path: Path) -> float:
    """The largest absolute difference between the exported graph and PyTorch on fresh input sizes."""
    worst = 0.0
    if fmt == "pt2":
        program = torch.export.load(str(path))
        run: Callable[[tuple[Tensor, ...]], list[Tensor]] = lambda args: list(program.module()(*args))  # noqa: E731
    else:
        try:
            import onnxruntime as ort
        except ImportError:
            return float("nan")  # nothing to run it with; the file is written all the same
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def run(args: tuple[Tensor, ...]) -> list[Tensor]:
            feed = {name: a.numpy() for name, a in zip(graph.input_names, args, strict=True)}
            return [torch.from_numpy(o) for o in session.run(None, feed)]

    gen_state = torch.get_rng_state()
    torch.manual_seed(1234)
    try:
        for sizes in graph.check_sizes:
            args = graph.make_inputs(sizes)
            with torch.no_grad():
                expected = graph.module(*args)
            got = run(args)
            for e, g in zip(expected, got, strict=True):
                worst = max(worst, float((e.float() - g.float()).abs().max()))
    finally:
        torch.set_rng_state(gen_state)
    return worst


GRAPHS: dict[str, Callable[[str | Path], list[Graph]]] = {
    "lm": lm_graphs,
    "classify": classify_graphs,
    "tag": tag_graphs,
    "seq2seq": seq2seq_graphs,
    "forecast": forecast_graphs,
}


def graphs_for(run_dir: str | Path) -> list[Graph]:
    task = read_run_config(run_dir)["task"]
    if task in GRAPHS:
        return GRAPHS[task](run_dir)
    from rnnkit.tasks import task_module

    module = task_module(task)
    if not hasattr(module, "export_graphs"):
        raise UserError(f"{run_dir}: export does not support {task} runs yet")
    return module.export_graphs(run_dir)


def _extras(run_dir: str | Path) -> dict[str, Any]:
    """What a consumer of the graphs needs besides them: a tagger's tag names and CRF scores."""
    if read_run_config(run_dir)["task"] != "tag":
        return {}
    from rnnkit.tasks import tag

    loaded = tag.load(run_dir)
    extras: dict[str, Any] = {"tags": list(loaded.vocab.tags)}
    crf = loaded.model.crf
    if crf is not None:
        # Viterbi over the emissions: score(y) = start[y1] + sum emit[t, yt] + sum trans[y(t-1), yt] + end[yT].
        trans, start, end = (t.detach().tolist() for t in crf._scores())
        extras["crf"] = {"transitions": trans, "start": start, "end": end}
    return extras


def export_run(run_dir: str | Path, fmt: str, out: str | Path | None = None, check: bool = True) -> dict[str, Any]:
    """Export every graph of a run into the folder `out` (default RUN_DIR/export); returns a report."""
    if fmt not in FORMATS:
        raise UserError(f"--format: expected one of {', '.join(FORMATS)}; got {fmt!r}")
    out = Path(out) if out is not None else Path(run_dir) / "export"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"format": fmt, "folder": str(out), "graphs": {}, **_extras(run_dir)}
    for graph in graphs_for(run_dir):
        path = export_graph(graph, fmt, out / f"{graph.name}.{fmt}")
        entry: dict[str, Any] = {"file": path.name, "inputs": graph.input_names, "outputs": graph.output_names,
                                 "dynamic": {n: {str(a): d for a, d in dims.items()} for n, dims in graph.dims.items()}}
        if check:
            diff = check_graph(graph, fmt, path)
            entry["max_abs_diff"] = diff
            if diff == diff and diff > TOLERANCE:  # NaN means there was nothing to run it with
                path.unlink()
                raise UserError(f"{path}: the exported graph differs from PyTorch by {diff:.2e} "
                                f"(tolerance {TOLERANCE:g}); not keeping it")
        report["graphs"][graph.name] = entry
    (out / "export.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report
