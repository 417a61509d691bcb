"""Small measurements behind design choices stated in the README and in docstrings.

- `optimizer`: one training step of the WikiText-2-sized word model (2x400 LSTM, 33,278-word adaptive softmax,
  batch 32 x 35 tokens drawn from a Zipf law) with Adam's default implementation and with its fused kernel;
- `compile`: one forward step of a layer-normalised LSTM cell (B=32, H=256) eager and under `torch.compile`,
  with the compile time;
- `streaming`: a 2-layer LSTM (H=512) stepped at B=1 without autograd: rnnkit's native step kernel, ATen's
  one-step cell functions, the generic cell step, and the bare matrix-vector products as the floor;
- `faults`: the training step of a 2-layer LSTM (B=32, T=100, I=128, H=512, the speed table's) with the native
  kernels' scratch pool and without it (`rnnkit.kernels.sequences.SCRATCH` keeping nothing): the minor page
  faults per step (fresh pages the operating system maps and zeroes, from getrusage) and the step's time, in turn.

    python benchmarks/probes.py --threads 2 [optimizer compile streaming faults]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from collections.abc import Callable

import torch
from bench_common import environment

from rnnkit import Recurrent
from rnnkit.kernels import native
from rnnkit.models.language_model import LanguageModel


def median_us(fn: Callable[[], object], calls: int, repeats: int = 5) -> dict[str, float]:
    fn()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - start) / calls * 1e6)
    return {"median_us": round(statistics.median(runs), 1), "min_us": round(min(runs), 1),
            "max_us": round(max(runs), 1)}


def optimizer() -> dict[str, object]:
    vocab = 33278
    zipf = 1.0 / torch.arange(1, vocab + 1, dtype=torch.float64)
    tokens = torch.multinomial(zipf / zipf.sum(), 32 * 36 * 40, replacement=True).view(40, 32, 36)
    out = {}
    for fused in (False, True):
        torch.manual_seed(0)
        model = LanguageModel(vocab, 400, 400, 2, "lstm", 0.3, 0.3, 0.3, adaptive_softmax=(2000, 10000))
        opt = torch.optim.Adam(model.parameters(), lr=2e-3, fused=fused or None)
        batches = iter(range(10**9))

        def step(model=model, opt=opt, batches=batches):
            x = tokens[next(batches) % len(tokens)]
            loss = model.loss({"inputs": x[:, :-1], "targets": x[:, 1:]}).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for _ in range(3):
            step()
        r = median_us(step, 8)
        out["fused Adam" if fused else "default Adam"] = {k.replace("_us", "_ms"): round(v / 1000, 1)
                                                          for k, v in r.items()}
    return out


def compile_step() -> dict[str, object]:
    B, H = 32, 256
    G = 4 * H

    def cell(r, xp, c, a_hh, a_c, s_c):
        gates = torch.nn.functional.layer_norm(r, (G,), a_hh, None, 1e-5) + xp
        i, f, g, o = gates.chunk(4, 1)
        c2 = f.sigmoid() * c + i.sigmoid() * g.tanh()
        return o.sigmoid() * torch.tanh(torch.nn.functional.layer_norm(c2, (H,), a_c, s_c, 1e-5)), c2

    args = [torch.randn(B, G), torch.randn(B, G), torch.randn(B, H), torch.randn(G), torch.randn(H), torch.randn(H)]
    start = time.perf_counter()
    compiled = torch.compile(cell, dynamic=False, fullgraph=True)
    with torch.no_grad():
        compiled(*args)
        first = time.perf_counter() - start
        return {"eager": median_us(lambda: cell(*args), 500), "compiled": median_us(lambda: compiled(*args), 500),
                "compile_s (first call, cache included)": round(first, 1)}


def streaming() -> dict[str, object]:
    """Recurrent.step of a 2x512 LSTM at B=1 on its three paths: rnnkit's native step kernel (the default
    where it builds), ATen's one-step cells (the fallback), and the generic cell step every other cell takes;
    with the bare matrix-vector products of a step as the floor."""
    H = 512
    layer = Recurrent("lstm", H, H, num_layers=2).eval()
    x = torch.randn(1, H)
    weights = [(torch.randn(4 * H, H), torch.randn(4 * H, H)) for _ in range(2)]
    state = {"native": None, "aten": None, "generic": None}

    def native_step():
        state["native"] = layer.step(x, state["native"])[1]

    def aten_cells():
        with native.disabled():
            state["aten"] = layer.step(x, state["aten"])[1]

    def generic():
        layer._torch_cell_step_possible = lambda: False  # the path every other cell takes
        try:
            state["generic"] = layer.step(x, state["generic"])[1]
        finally:
            del layer._torch_cell_step_possible

    def bare():
        return [(x @ wi.T) + (x @ wh.T) for wi, wh in weights]

    with torch.no_grad():
        return {"native step": median_us(native_step, 200, 9), "ATen cell step": median_us(aten_cells, 200, 9),
                "generic step": median_us(generic, 200, 9), "bare products": median_us(bare, 200, 9)}


def faults() -> dict[str, object]:
    from rnnkit.kernels.sequences import SCRATCH

    torch.manual_seed(0)
    layer = Recurrent("lstm", 128, 512, num_layers=2)
    x = torch.randn(32, 100, 128)

    def step():
        layer.zero_grad(set_to_none=True)
        layer(x)[0].sum().backward()

    kept = SCRATCH.limit_bytes
    runs: dict[str, dict[str, list[float]]] = {"pool": {"faults": [], "ms": []}, "no pool": {"faults": [], "ms": []}}
    try:
        for _ in range(3):
            step()
        for _ in range(10):  # the two in turn, so that the machine's drift falls on both
            for name, limit in (("pool", kept), ("no pool", 0)):
                SCRATCH.limit_bytes = limit
                if limit == 0:
                    SCRATCH.clear()
                step()  # settle into this setting
                before, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
                step()
                runs[name]["ms"].append((time.perf_counter() - start) * 1000)
                runs[name]["faults"].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    finally:
        SCRATCH.limit_bytes = kept
    return {name: {"page_faults_per_step": statistics.median(r["faults"]),
                   "step_ms": round(statistics.median(r["ms"]), 1)} for name, r in runs.items()}


PROBES = {"optimizer": optimizer, "compile": compile_step, "streaming": streaming, "faults": faults}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("probes", nargs="*", help=f"any of {', '.join(PROBES)} (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    unknown = [p for p in args.probes if p not in PROBES]
    if unknown:
        ap.error(f"unknown probe {unknown[0]!r}; expected any of {', '.join(PROBES)}")
    torch.set_num_threads(args.threads)
    results = {name: PROBES[name]() for name in args.probes or PROBES}
    print(json.dumps({**results, **environment()}, indent=2))


if __name__ == "__main__":
    main()
