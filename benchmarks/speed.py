"""Speed of every cell against PyTorch's fused kernels and other libraries, measured in one run.

Measures, for each case, the median and min-max over --repeats runs after a warm-up:

- training step (forward and backward through a stack of layers, summed outputs as the loss): rnnkit's cells on
  their default path, PyTorch's fused `nn.RNN/LSTM/GRU`, an `nn.LSTMCell` loop, Keras 3 on the torch backend and
  Flax (`nnx.RNN` over `OptimizedLSTMCell`/`GRUCell`, jit-compiled), when installed;
- each rnnkit cell's training step against torch.nn's (its own kind for the plain cells, the LSTM for the
  others), both as the ratio of the two medians measured in blocks and alternating: each rnnkit step followed
  by one of torch.nn's, as when other layers run between the recurrent ones, the median of at least 15 pairs'
  ratios;
- inference throughput (forward only, tokens per second);
- streaming latency at B=1 (one step per call): rnnkit's `Recurrent.step`, `nn.LSTM` called with T=1,
  `nn.LSTMCell`, and the bare matrix-vector products of a step as the floor;
- the machine's sgemm peak (a 2048-square matrix product), and each LSTM training step as a fraction of it
  (floating-point work counted as 3x the forward's matrix products): against the peak measured at the start
  of the run, and, for rnnkit's and torch.nn's LSTM, paired (the step and the product timed in turn, the
  median of at least 15 pairs' ratios), which holds when the machine's speed drifts during the run.

First-call times (compilation included, for Flax) are reported separately, and so is the time a fresh process
takes to have rnnkit's native C++ kernels ready, with an empty cache (the build, unless the package holds a
prebuilt library) and with a cached build.
Peers that are not installed are skipped with a note. Figures go to stdout and to --out as JSON.

    python benchmarks/speed.py --threads 2 --repeats 5 --out benchmarks/results/speed.json
    python benchmarks/speed.py --grid full ...   # every H in {128,256,512,1024}, T in {50,200,1000}, B in {1,32,128}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from bench_common import repeat_seconds
from torch import nn

from rnnkit import Recurrent
from rnnkit.cells import LayerNormLSTMCell
from rnnkit.kernels import native

CELLS = ["rnn", "lstm", "gru", "layernorm-lstm", "layernorm-gru", "peephole-lstm", "indrnn", "mingru", "minlstm"]
TORCH_PEER = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class StepwiseLayerNormLSTM(LayerNormLSTMCell):
    """The layer-norm LSTM without its whole-sequence function: autograd through every step, as a
    hand-written cell runs in plain PyTorch."""

    sequence_kind = None


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> dict[str, float]:
    first, times = repeat_seconds(fn, repeats, warmup)
    return {"median_ms": 1000 * statistics.median(times), "min_ms": 1000 * min(times), "max_ms": 1000 * max(times),
            "first_call_ms": 1000 * first}


def native_start_up() -> dict[str, object]:
    """Seconds a fresh process (rnnkit already imported) takes to have rnnkit's native kernels ready: with an
    empty cache (the C++ build included, unless the package holds a prebuilt library) and with the library
    already cached; and where the library came from each time."""
    code = ("import json, time; from rnnkit.kernels import native; t = time.perf_counter(); native.library(); "
            "print(json.dumps([time.perf_counter() - t, native.info().get('source') or native.status()]))")
    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as cache:
        for label in ("cold", "warm"):
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                  env={**os.environ, "RNNKIT_CACHE": cache}, check=True)
            seconds, source = json.loads(done.stdout.splitlines()[-1])
            out[f"{label}_s"], out[label] = round(seconds, 2), source
    out["status"] = native.status()
    return out


def without_native(run: Callable) -> Callable:
    """`run` with rnnkit's native kernels switched off (the forward picks the path; its backward follows)."""
    def wrapped(x):
        with native.disabled():
            return run(x)

    return wrapped


def sgemm_peak(repeats: int) -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    r = timed(lambda: a @ b, repeats, warmup=2)
    return 2 * 2048**3 / (r["median_ms"] / 1000) / 1e9


def paired_fraction(step: Callable[[], object], flops: float, repeats: int) -> dict[str, float]:
    """A training step's rate as a fraction of the sgemm peak, drift-proof: the step and a 2048-square
    product timed in turn, `repeats` pairs, each pair's ratio of rates; the median and min-max of the
    ratios. (This machine's speed drifts by a third over a day, more than the differences measured here, so
    a peak taken minutes earlier can misstate the fraction.)"""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    step(), a @ b
    ratios = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        t_step = time.perf_counter() - t
        t = time.perf_counter()
        a @ b
        t_gemm = time.perf_counter() - t
        ratios.append((flops / t_step) / (2 * 2048**3 / t_gemm))
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def alternating(step: Callable[[], object], other: Callable[[], object], pairs: int) -> dict[str, float]:
    """`step` and `other` in turn, as when other layers' work runs between a recurrent layer's steps (their
    buffers and weights then leave the caches, the allocator's free memory is taken by others, the threads
    go idle between the two): the median and min-max over `pairs` of the ratio of the two times."""
    step(), other()
    ratios = []
    for _ in range(pairs):
        t = time.perf_counter()
        step()
        t_step = time.perf_counter() - t
        t = time.perf_counter()
        other()
        ratios.append(t_step / (time.perf_counter() - t))
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def lstm_flops(B: int, T: int, I: int, H: int, L: int) -> float:
    """Matrix-product work of an LSTM training step: forward 2*B*(I+H)*4H per step and layer, backward twice that."""
    per_step = sum(2 * B * ((I if layer == 0 else H) + H) * 4 * H for layer in range(L))
    return 3 * per_step * T


# ------------------------------------------------------------------------------------ the peers


def torch_case(kind: str, I: int, H: int, L: int):
    if kind == "lstmcell-loop":
        cells = nn.ModuleList([nn.LSTMCell(I if k == 0 else H, H) for k in range(L)])

        def run(x):
            B, T, _ = x.shape
            seq = x
            for cell in cells:
                h = c = x.new_zeros(B, H)
                outs = []
                for t in range(T):
                    h, c = cell(seq[:, t], (h, c))
                    outs.append(h)
                seq = torch.stack(outs, 1)
            return seq

        return cells, run
    module = TORCH_PEER[kind](I, H, num_layers=L, batch_first=True)
    return module, lambda x: module(x)[0]


def keras_case(kind: str, I: int, H: int, L: int):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    if keras.backend.backend() != "torch":
        raise ImportError("Keras runs on another backend here")
    layer = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU, "rnn": keras.layers.SimpleRNN}[kind]
    model = keras.Sequential([keras.Input((None, I))] + [layer(H, return_sequences=True) for _ in range(L)])
    return model, lambda x: model(x)


def flax_train_step(kind: str, B: int, T: int, I: int, H: int, L: int, repeats: int, train: bool) -> dict[str, float]:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    cell = {"lstm": nnx.OptimizedLSTMCell, "gru": nnx.GRUCell}[kind]
    rngs = nnx.Rngs(0)
    layers = [nnx.RNN(cell(I if k == 0 else H, H, rngs=rngs)) for k in range(L)]

    class Stack(nnx.Module):
        def __init__(self):
            self.layers = nnx.List(layers) if hasattr(nnx, "List") else layers

        def __call__(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    model = Stack()
    x = jnp.asarray(torch.randn(B, T, I).numpy())

    @nnx.jit
    def step(model, x):
        return nnx.grad(lambda m: m(x).sum())(model)

    @nnx.jit
    def forward(model, x):
        return model(x)

    fn = (lambda: jax.block_until_ready(step(model, x))) if train else (lambda: forward(model, x).block_until_ready())
    return timed(fn, repeats, warmup=2)


# ------------------------------------------------------------------------------------- measures


def training_step(module: nn.Module, run: Callable, x: torch.Tensor, repeats: int) -> dict[str, float]:
    return timed(one_training_step(module, run, x), repeats, warmup=2)


def one_training_step(module: nn.Module, run: Callable, x: torch.Tensor) -> Callable[[], None]:
    def step():
        module.zero_grad(set_to_none=True)
        run(x).sum().backward()

    return step


def inference(run: Callable, x: torch.Tensor, repeats: int) -> dict[str, float]:
    def fwd():
        with torch.no_grad():
            run(x)

    r = timed(fwd, repeats, warmup=2)
    r["tokens_per_s"] = x.shape[0] * x.shape[1] / (r["median_ms"] / 1000)
    return r


def streaming(H: int, L: int, repeats: int, steps: int = 200) -> dict[str, dict[str, float]]:
    """Per-step latency (us) at B=1 of H-unit LSTM stacks fed one token vector at a time."""
    x = torch.randn(1, H)
    out: dict[str, dict[str, float]] = {}
    ours = Recurrent("lstm", H, H, num_layers=L).eval()
    ref = nn.LSTM(H, H, num_layers=L, batch_first=True).eval()
    cells = [nn.LSTMCell(H, H).eval() for _ in range(L)]
    weights = [(torch.randn(4 * H, H), torch.randn(4 * H, H)) for _ in range(L)]

    def loop(step_fn):
        def run():
            state = None
            with torch.no_grad():
                for _ in range(steps):
                    state = step_fn(state)

        return run

    cases = {
        "rnnkit Recurrent.step": lambda s: ours.step(x, s)[1],
        "nn.LSTM with T=1": lambda s: ref(x.unsqueeze(1), s)[1],
        "nn.LSTMCell stack": lambda s: [c(x, None if s is None else s[k]) for k, c in enumerate(cells)],
        "bare matrix-vector products": lambda s: [(x @ wi.T) + (x @ wh.T) for wi, wh in weights],
    }
    for name, fn in cases.items():
        r = timed(loop(fn), repeats, warmup=2)
        out[name] = {k: v * 1000 / steps for k, v in r.items() if k.endswith("_ms")}  # us per step
    return out


PARTS = ("grid", "long", "streaming")


def grid(kind: str) -> list[dict[str, int]]:
    if kind == "full":
        return [{"B": B, "T": T, "H": H} for H in (128, 256, 512, 1024) for T in (50, 200, 1000) for B in (1, 32, 128)]
    return [{"B": 32, "T": 100, "H": 256}, {"B": 32, "T": 100, "H": 512}]


def long_sequence(I: int, T: int, repeats: int) -> dict[str, dict[str, float]]:
    """minGRU against nn.GRU on a long sequence, one layer, B=8, H=256."""
    B, H = 8, 256
    x = torch.randn(B, T, I)
    long_cases = {"rnnkit mingru": Recurrent("mingru", I, H), "torch gru": nn.GRU(I, H, batch_first=True)}
    out = {}
    for name, module in long_cases.items():
        r = training_step(module, lambda x, m=module: m(x)[0], x, max(3, repeats // 2))
        out[name] = r
        print(json.dumps({"long": name, "B": B, "T": T, "H": H, "train_ms": round(r["median_ms"], 1)}), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--input-size", type=int, default=128)
    ap.add_argument("--grid", choices=["quick", "full"], default="quick")
    ap.add_argument("--size", nargs=3, type=int, action="append", metavar=("B", "T", "H"),
                    help="measure this size instead of the grid (repeatable)")
    ap.add_argument("--cells", nargs="+", default=CELLS)
    ap.add_argument("--long", type=int, default=4096, help="sequence length of the minGRU-against-GRU case")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                    help="what to measure: the size grid against peers, minGRU on a long sequence, streaming steps")
    ap.add_argument("--out", default="benchmarks/results/speed.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    L, I = args.layers, args.input_size
    start_up = native_start_up()
    print(f"native kernels: {start_up}", flush=True)
    peak = sgemm_peak(args.repeats)
    print(f"sgemm peak: {peak:.1f} GFLOP/s ({args.threads} threads)", flush=True)
    results: dict[str, object] = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                                              "torch": torch.__version__, "threads": args.threads,
                                              "sgemm_gflops": peak}, "native_start_up": start_up, "cases": []}
    sizes = [{"B": b, "T": t, "H": h} for b, t, h in args.size] if args.size else grid(args.grid)
    for size in sizes if "grid" in args.parts else []:
        B, T, H = size["B"], size["T"], size["H"]
        x = torch.randn(B, T, I)
        rows = {}
        for cell in args.cells:
            layer = Recurrent(cell, I, H, num_layers=L)
            rows[f"rnnkit {cell}"] = (layer, lambda x, layer=layer: layer(x)[0])
        if "layernorm-lstm" in args.cells:
            layer = Recurrent("layernorm-lstm", I, H, num_layers=L)
            rows["layernorm-lstm, ATen path (no native kernels)"] = (
                layer, without_native(lambda x, layer=layer: layer(x)[0]))
            layer = Recurrent(StepwiseLayerNormLSTM, I, H, num_layers=L)
            rows["layernorm-lstm, autograd per step"] = (layer, lambda x, layer=layer: layer(x)[0])
        for kind in ("rnn", "lstm", "gru", "lstmcell-loop"):
            rows[f"torch {kind}"] = torch_case(kind, I, H, L)
        for kind in ("lstm", "gru"):
            try:
                rows[f"keras {kind}"] = keras_case(kind, I, H, L)
            except ImportError as e:
                print(f"keras {kind}: skipped ({e})")
        for name, (module, run) in rows.items():
            train = training_step(module, run, x, args.repeats)
            infer = inference(run, x, args.repeats)
            entry = {"case": name, **size, "L": L, "I": I, "train": train, "inference": infer}
            if name.endswith(" lstm"):
                flops = lstm_flops(B, T, I, H, L)
                entry["train"]["fraction_of_peak"] = flops / (train["median_ms"] / 1000) / 1e9 / peak
                if name.startswith(("rnnkit", "torch")):
                    paired = paired_fraction(one_training_step(module, run, x), flops, max(args.repeats, 15))
                    entry["train"]["fraction_of_peak_paired"] = paired
                    print(json.dumps({"case": name, **size,
                                      "fraction_of_peak": round(entry["train"]["fraction_of_peak"], 3),
                                      "paired": {k: round(v, 3) for k, v in paired.items()}}), flush=True)
            results["cases"].append(entry)
            print(json.dumps({"case": name, **size, "train_ms": round(train["median_ms"], 1),
                              "train_min_max": [round(train["min_ms"], 1), round(train["max_ms"], 1)],
                              "tokens_per_s": round(infer["tokens_per_s"])}), flush=True)
        # Each rnnkit training step in turn with one of torch.nn's (its own kind for the plain cells, the LSTM
        # for the others), against the ratio of the two measured in blocks above.
        medians = {e["case"]: e["train"]["median_ms"] for e in results["cases"] if e["H"] == H and e["B"] == B
                   and e["T"] == T}
        for name, (module, run) in rows.items():
            if not name.startswith("rnnkit "):
                continue
            peer = f"torch {name.split()[1] if name.split()[1] in TORCH_PEER else 'lstm'}"
            ratios = alternating(one_training_step(module, run, x), one_training_step(*rows[peer], x),
                                 max(args.repeats, 15))
            entry = next(e for e in results["cases"] if e["case"] == name and e["H"] == H and e["B"] == B
                         and e["T"] == T)
            entry["train"]["against"] = {"peer": peer, "blocks": medians[name] / medians[peer],
                                         "alternating": ratios}
            print(json.dumps({"case": name, **size, "against": peer, "blocks": round(medians[name] / medians[peer], 3),
                              "alternating": {k: round(v, 3) for k, v in ratios.items()}}), flush=True)
    if "long" in args.parts:
        results["long"] = long_sequence(I, args.long, args.repeats)
    if "streaming" in args.parts:
        results["streaming_us"] = streaming(512, L, args.repeats)
        print(json.dumps({"streaming_us_per_step": {k: round(v["median_ms"], 1)
                                                    for k, v in results["streaming_us"].items()}}), flush=True)
    # Flax last: JAX's thread pools stay busy after its runs and slowed whatever was measured next.
    for size in sizes if "grid" in args.parts else []:
        B, T, H = size["B"], size["T"], size["H"]
        for kind in ("lstm", "gru"):
            try:
                train = flax_train_step(kind, B, T, I, H, L, args.repeats, True)
                infer = flax_train_step(kind, B, T, I, H, L, args.repeats, False)
                infer["tokens_per_s"] = B * T / (infer["median_ms"] / 1000)
                results["cases"].append({"case": f"flax {kind}", **size, "L": L, "I": I, "train": train,
                                         "inference": infer})
                print(json.dumps({"case": f"flax {kind}", **size, "train_ms": round(train["median_ms"], 1),
                                  "first_call_ms": round(train["first_call_ms"]),
                                  "tokens_per_s": round(infer["tokens_per_s"])}), flush=True)
            except ImportError as e:
                print(f"flax {kind}: skipped ({e})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
