"""Export a trained run to ONNX or a `torch.export` program (.pt2), with a parity check.

What is here: `Graph` (one module to export with example inputs and the names of its dimensions), and
`export_run`, which asks the run's task for its graphs (`Task.export_graphs`: for a language model the whole
sequence with state in and out and one step for streaming generation, and so on), exports each, runs the
result (onnxruntime for ONNX, torch.export.load for .pt2) on inputs of sizes other than the traced ones, and
reports the largest difference from PyTorch. What is not: the models themselves or which graphs a task has
(tasks/).

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

from rnnkit.config import UserError
from rnnkit.io import atomic_write
from rnnkit.layers import Recurrent
from rnnkit.tasks import runner

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


def export_run(run_dir: str | Path, fmt: str, out: str | Path | None = None, check: bool = True) -> dict[str, Any]:
    """Export every graph of a run into the folder `out` (default RUN_DIR/export); returns a report."""
    if fmt not in FORMATS:
        raise UserError(f"--format: expected one of {', '.join(FORMATS)}; got {fmt!r}")
    task = runner.task_of(run_dir)
    out = Path(out) if out is not None else Path(run_dir) / "export"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    run = runner.load(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    graphs = task.export_graphs(run)
    report: dict[str, Any] = {"format": fmt, "folder": str(out), "graphs": {}, **task.export_extras(run)}
    for graph in graphs:
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
