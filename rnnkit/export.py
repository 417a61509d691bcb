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
from rnnkit.data.text import atomic_write
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
    """

    name: str
    module: nn.Module
    inputs: tuple[Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    dims: dict[str, dict[int, str]]
    make_inputs: Callable[[dict[str, int]], tuple[Tensor, ...]]
    check_sizes: list[dict[str, int]] = field(default_factory=lambda: [{"B": 1, "T": 1}, {"B": 5, "T": 23}])


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


# --------------------------------------------------------------------------------------- export


def _dynamic_shapes(graph: Graph) -> dict[str, tuple[dict[int, Any], ...]]:
    dims: dict[str, Any] = {}
    out = []
    for name in graph.input_names:
        spec = {}
        for axis, dim in graph.dims.get(name, {}).items():
            if dim not in dims:
                dims[dim] = torch.export.Dim(dim, min=1, max=1 << 20)
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


GRAPHS: dict[str, Callable[[str | Path], list[Graph]]] = {"lm": lm_graphs}


def graphs_for(run_dir: str | Path) -> list[Graph]:
    task = read_run_config(run_dir)["task"]
    if task in GRAPHS:
        return GRAPHS[task](run_dir)
    from rnnkit.tasks import task_module

    module = task_module(task)
    if not hasattr(module, "export_graphs"):
        raise UserError(f"{run_dir}: export does not support {task} runs yet")
    return module.export_graphs(run_dir)


def export_run(run_dir: str | Path, fmt: str, out: str | Path | None = None, check: bool = True) -> dict[str, Any]:
    """Export every graph of a run into the folder `out` (default RUN_DIR/export); returns a report."""
    if fmt not in FORMATS:
        raise UserError(f"--format: expected one of {', '.join(FORMATS)}; got {fmt!r}")
    out = Path(out) if out is not None else Path(run_dir) / "export"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"format": fmt, "folder": str(out), "graphs": {}}
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
