"""rnnkit's native kernels: C++ built on first use with the machine's compiler, loaded with ctypes.

A recurrent layer's time loop runs in C++: each step's recurrent product through the BLAS inside PyTorch's
own CPU library (gemm.h: MKL's packed GEMM for float32), then all of the step's element-wise work (the
gates, the cell update, layer norms where the cell has them, the masks) in one pass over each batch row,
forward and backward. `lnlstm.cpp` holds the layer-normalised LSTM, `cells.cpp` the plain RNN, LSTM and
GRU, and the linear recurrence of minGRU and minLSTM. Where PyTorch's library offers no GEMM, the loop
runs in Python (torch.mm for the products) and calls the step functions one at a time.

The sources include no PyTorch headers, so they build in about two seconds; the library is cached under
`$RNNKIT_CACHE` (default `~/.cache/rnnkit`) by a hash of the sources, the compiler, its flags and the CPU,
and built atomically, so concurrent processes don't see a partial file.

Without a C++ compiler, or with `RNNKIT_NATIVE=0`, `library()` returns None and the callers keep their
ATen path, which computes the same function. `status()` says which is in use and why.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

SOURCES = [Path(__file__).with_name(name) for name in ("lnlstm.cpp", "cells.cpp")]
HEADERS = [Path(__file__).with_name(name) for name in ("gemm.h", "norm.h", "parallel.h")]
# -ffast-math lets the compiler vectorise exp and tanh through glibc's vector math library (libmvec); the
# kernels neither test for nor produce NaN or infinity themselves.
FLAGS = ["-O3", "-march=native", "-ffast-math", "-shared", "-fPIC", "-std=c++17"]

_lock = threading.Lock()
_state: dict[str, object] = {"loaded": False, "lib": None, "reason": "not built yet"}


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_signature() -> str:
    """The CPU's model and feature flags, so a cache shared between machines never hands one an
    instruction set it lacks (-march=native)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    lines = [line for line in text.splitlines() if line.startswith(("model name", "flags", "Features"))]
    return "\n".join(sorted(set(lines))) or platform.machine()


def cache_dir() -> Path:
    root = os.environ.get("RNNKIT_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "rnnkit"


def _build(compiler: str) -> Path:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256(b"\0".join([*(path.read_bytes() for path in SOURCES + HEADERS), " ".join(FLAGS).encode(),
                                     version.encode(), _cpu_signature().encode()])).hexdigest()[:16]
    target = cache_dir() / "native" / f"kernels-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
    os.close(fd)
    try:
        for extra in (["-fopenmp"], []):  # without OpenMP (some compilers lack it), on one thread
            done = subprocess.run([compiler, *FLAGS, *extra, *map(str, SOURCES), "-o", tmp], capture_output=True,
                                  text=True, timeout=300)
            if done.returncode == 0:
                break
        if done.returncode != 0:
            raise RuntimeError(f"{compiler} failed on rnnkit's native kernels: {done.stderr.strip()[-2000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i64, f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
    for kind, forward_args, slots in (("lnlstm", [p, i64, f64], LNLSTM_SLOTS), ("cell", [p, i64, f64], CELL_SLOTS)):
        count = getattr(lib, f"rnnkit_{kind}_slots")
        count.restype = i64
        if count() != len(slots):
            raise RuntimeError(f"rnnkit's {kind} kernels have {count()} slots; rnnkit.kernels.native expects "
                               f"{len(slots)}")
        for dtype in ("f32", "f64"):
            fwd = getattr(lib, f"rnnkit_{kind}_forward_{dtype}")
            fwd.argtypes, fwd.restype = forward_args, None
            bwd = getattr(lib, f"rnnkit_{kind}_backward_{dtype}")
            bwd.argtypes, bwd.restype = [p, i64, i64], None
            fwd = getattr(lib, f"rnnkit_{kind}_forward_sequence_{dtype}")
            fwd.argtypes, fwd.restype = [p, *forward_args[2:]], None
            bwd = getattr(lib, f"rnnkit_{kind}_backward_sequence_{dtype}")
            bwd.argtypes, bwd.restype = [p], None
    lib.rnnkit_step_slots.restype = i64
    if lib.rnnkit_step_slots() != len(STEP_SLOTS):
        raise RuntimeError(f"rnnkit's step kernel has {lib.rnnkit_step_slots()} slots; expected {len(STEP_SLOTS)}")
    for dtype in ("f32", "f64"):
        step = getattr(lib, f"rnnkit_cell_step_{dtype}")
        step.argtypes, step.restype = [p], None
        fwd = getattr(lib, f"rnnkit_linear_forward_{dtype}")
        fwd.argtypes, fwd.restype = [p, p, p, p, i64, i64], None
        bwd = getattr(lib, f"rnnkit_linear_backward_{dtype}")
        bwd.argtypes, bwd.restype = [p, p, p, i64, i64], None
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernel library, building it on first use; None where it cannot be had."""
    if _state["loaded"]:
        return _state["lib"]  # type: ignore[return-value]
    with _lock:
        if _state["loaded"]:
            return _state["lib"]  # type: ignore[return-value]
        lib, reason = None, "built"
        if os.environ.get("RNNKIT_NATIVE", "1") == "0":
            reason = "disabled by RNNKIT_NATIVE=0"
        elif (compiler := _compiler()) is None:
            reason = "no C++ compiler found (set CXX)"
        else:
            try:
                lib = _declare(ctypes.CDLL(str(_build(compiler))))
            except (OSError, RuntimeError, subprocess.SubprocessError) as err:
                reason = f"build failed: {err}"
                log.warning("rnnkit's native kernels are not available (%s); using the ATen path", err)
        _state.update(loaded=True, lib=lib, reason=reason)
        return lib


def status() -> str:
    """'native' or 'aten (why)', after trying to load the library."""
    lib = library()
    return "native" if lib is not None else f"aten ({_state['reason']})"


# The slot names of the kernels' `enum Slot`s, in order (their counts are checked when the library loads).
GEMM_SLOTS = ("gemm_kind", "gemm_fn", "weight_hh", "packed_wt", "packed_w")
LNLSTM_SLOTS = ("T", "B", "H", "xp", "prod", "gain_hh", "gain_c", "bias_c", "mask", "rmask", "hs", "cs", "h_in",
                "r_hat", "r_rstd", "act", "c_new", "c_mean", "c_rstd", "tanh_c", "out", "grad_out", "dh_mm", "keep_h",
                "dc", "d_gates", "d_r", "d_gain_hh", "d_gain_c", "d_bias_c", "gain_ih", "shift_ih", "u_mean", "u_rstd",
                "d_gain_ih", "d_shift_ih", *GEMM_SLOTS)
CELL_SLOTS = ("T", "B", "H", "cell", "xp", "prod", "bias_hn", "mask", "rmask", "hs", "cs", "h_in", "act", "aux",
              "c_new", "out", "grad_out", "dh_mm", "keep_h", "dc", "d_xp", "d_prod", "d_bias_hn", "gain_ih", "shift_ih",
              "u_mean", "u_rstd", "gain_hh", "r_hat", "r_rstd", "d_gain_ih", "d_shift_ih", "d_gain_hh", "peep_i",
              "peep_f", "peep_o", "d_peep_i", "d_peep_f", "d_peep_o", "bias_x", "d_bias_x", *GEMM_SLOTS)
CELL_KINDS = {"rnn": 0, "rnn-relu": 1, "lstm": 2, "gru": 3}
# then four per layer: w_ih, w_hh, b_ih, b_hh
STEP_SLOTS = ("cell", "B", "I", "H", "layers", "x", "h0", "c0", "h_out", "c_out", "scratch", "gemm_fn")


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Within the block, callers take their ATen path (for comparisons in tests and benchmarks)."""
    library()
    with _lock:
        saved = dict(_state)
        _state.update(lib=None, reason="disabled by rnnkit.kernels.native.disabled()")
    try:
        yield
    finally:
        with _lock:
            _state.update(saved)


# ------------------------------------------------------------------------------- the BLAS (gemm.h)

_blas: dict[str, object] = {}


def _torch_blas() -> dict[str, int]:
    """Addresses of the GEMM functions in PyTorch's CPU library (MKL's, in the x86-64 builds): the packed
    sgemm API and the Fortran sgemm_/dgemm_; empty where the library has none of them."""
    if "symbols" in _blas:
        return _blas["symbols"]  # type: ignore[return-value]
    symbols: dict[str, int] = {}
    names = ("cblas_sgemm_pack_get_size", "cblas_sgemm_pack", "cblas_sgemm_compute", "sgemm_", "dgemm_")
    try:
        import torch

        lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / f"libtorch_cpu{_shared_suffix()}"))
        for name in names:
            try:
                symbols[name] = ctypes.cast(getattr(lib, name), ctypes.c_void_p).value or 0
            except AttributeError:
                pass
    except OSError:
        pass
    if os.environ.get("RNNKIT_NATIVE_GEMM", "1") == "0":
        symbols = {}
    _blas["symbols"] = symbols
    return symbols


def _shared_suffix() -> str:
    return {"Darwin": ".dylib", "Windows": ".dll"}.get(platform.system(), ".so")


def _packing() -> tuple | None:
    """MKL's cblas_sgemm_pack_get_size and cblas_sgemm_pack as ctypes functions, made once; None where
    PyTorch's library lacks the packed API."""
    if "packing" not in _blas:
        symbols, c_int, c_void_p = _torch_blas(), ctypes.c_int, ctypes.c_void_p
        _blas["packing"] = None
        if all(symbols.get(n) for n in ("cblas_sgemm_pack_get_size", "cblas_sgemm_pack", "cblas_sgemm_compute")):
            _blas["packing"] = (
                ctypes.CFUNCTYPE(ctypes.c_size_t, c_int, c_int, c_int, c_int)(symbols["cblas_sgemm_pack_get_size"]),
                ctypes.CFUNCTYPE(None, c_int, c_int, c_int, c_int, c_int, c_int, ctypes.c_float, c_void_p, c_int,
                                 c_void_p)(symbols["cblas_sgemm_pack"]))
    return _blas["packing"]  # type: ignore[return-value]


def gemm_slots(weight_hh, batch_size: int, keep: list, backward: bool = True) -> dict[str, int] | None:
    """The GEMM slots for a sequence call with recurrent weights `weight_hh` (G, H) and `batch_size` rows:
    packed copies of W_hh for float32 (the backward's only with `backward`; appended to `keep`, which the
    caller holds for the call), the Fortran GEMM for float64; None where PyTorch's library offers neither
    (the caller then runs the time loop in Python with torch.mm)."""
    import torch

    symbols = _torch_blas()
    weight_hh = weight_hh.detach().contiguous()
    keep.append(weight_hh)
    G, H = weight_hh.shape
    if weight_hh.dtype == torch.float32 and (packing := _packing()) is not None:
        size, pack = packing
        row_major, b_matrix, no_trans, trans = 101, 162, 111, 112
        packed = []
        # x (B, H) @ W^T -> (B, G); d (B, G) @ W -> (B, H): W (G, H) row-major, leading dimension H.
        for m, n, k, t in ((batch_size, G, H, trans), (batch_size, H, G, no_trans))[:2 if backward else 1]:
            buffer = torch.empty(size(b_matrix, m, n, k) + 64, dtype=torch.uint8)
            pack(row_major, b_matrix, t, m, n, k, 1.0, weight_hh.data_ptr(), H, buffer.data_ptr())
            packed.append(buffer)
        keep.extend(packed)
        return {"gemm_kind": 1, "gemm_fn": symbols["cblas_sgemm_compute"], "weight_hh": weight_hh.data_ptr(),
                "packed_wt": packed[0].data_ptr(), "packed_w": packed[1].data_ptr() if backward else 0}
    fortran = symbols.get("dgemm_" if weight_hh.dtype == torch.float64 else "sgemm_")
    if fortran:
        return {"gemm_kind": 2, "gemm_fn": fortran, "weight_hh": weight_hh.data_ptr()}
    return None


@contextlib.contextmanager
def python_loop() -> Iterator[None]:
    """Within the block, the kernels' callers run the time loop in Python with torch.mm, as where
    PyTorch's library has no usable GEMM (for comparisons in tests and benchmarks)."""
    saved = dict(_blas)
    _blas.update(symbols={}, packing=None)
    try:
        yield
    finally:
        _blas.clear()
        _blas.update(saved)


def step_gemm(dtype) -> int:
    """The Fortran GEMM of `dtype` (float32 or float64) in PyTorch's library, for the streaming step
    kernel; 0 where there is none."""
    import torch

    return _torch_blas().get({torch.float32: "sgemm_", torch.float64: "dgemm_"}.get(dtype, ""), 0)


class Slots:
    """A kernel's int64 slot array (`names` in its order), from tensors (their data pointers), ints, or
    None (0). It holds on to the tensors, so that a temporary (a `.contiguous()` copy, say) lives as long
    as the kernel may read it; ctypes passes it as the array (`_as_parameter_`)."""

    def __init__(self, names: tuple[str, ...], **values: object) -> None:
        slots = [0] * len(names)
        for name, value in values.items():
            slots[names.index(name)] = value.data_ptr() if hasattr(value, "data_ptr") else int(value or 0)
        self.tensors = [v for v in values.values() if hasattr(v, "data_ptr")]
        self._as_parameter_ = (ctypes.c_int64 * len(slots))(*slots)
