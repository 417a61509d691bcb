"""rnnkit's native kernels: C++ loaded with ctypes, shipped prebuilt in wheels or built on first use.

A recurrent layer's time loop runs in C++: each step's recurrent product through the BLAS inside PyTorch's
own CPU library (gemm.h: MKL's packed GEMM for float32), then all of the step's element-wise work (the
gates, the cell update, layer norms where the cells have them, the masks) in one pass over each batch row,
forward and backward. `lnlstm.cpp` holds the layer-normalised LSTM, `cells.cpp` the plain RNN, LSTM and
GRU, and the linear recurrence of minGRU and minLSTM. Where PyTorch's library offers no GEMM, the loop
runs in Python (torch.mm for the products) and calls the step functions one at a time.

Where the library comes from, first found first (`status()` says which):

1. prebuilt: `pip install .` and wheels carry one library per CPU variant (build.py: AVX-512, AVX2 or
   baseline x86-64), compiled when the package was built; the loader takes the best this CPU runs. A key
   of the sources compiled into it must match the sources beside it, so that one left from older sources
   is not used.
2. cached: built before, under `$RNNKIT_CACHE/native` (default `~/.cache/rnnkit/native`), named by that key
   and the variant.
3. built: compiled now with the machine's C++ compiler (a few seconds), into the cache; the route of an
   editable install or a checkout.

The cache is used only where its directories and the library are owned by the current user and writable by
nobody else; otherwise the library is built in a private temporary directory for this process, with a
warning. A file lock makes concurrent first builds (several ranks on a cold cache) build once: the others
wait, then load. Builds of other sources, unused for a day, are removed.

Checked at load, before any kernel runs: the slot layouts the kernels were built with, and their BLAS path,
a small product through each GEMM they would call (MKL's packed sgemm, sgemm_, dgemm_) against torch.mm. A
mismatch (an ILP64 or another BLAS behind those names) leaves rnnkit on the ATen paths, with the reason.
Threads: every call passes torch.get_num_threads() (`Slots` fills the `threads` slot), so the kernels follow
torch.set_num_threads; `threads_used()` says how many ran the latest threaded loop.

Loading and running the kernels changes nothing else in the process: built without fast math (build.py),
they leave the floating-point mode (flush-to-zero, denormals-are-zero) and every thread setting as they were.

Without a library, or with `RNNKIT_NATIVE=0`, `library()` returns None and the callers keep their ATen path,
which computes the same function. A missing compiler, a failed build and a failed check each log one warning
line that names the fix. `RNNKIT_NATIVE_VARIANT` picks a variant (say `x86-64`, to compare with the baseline).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from rnnkit.kernels.native import build

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
# Where prebuilt libraries are looked for (tests point it elsewhere to take the cache route).
_prebuilt_dir: Path | None = HERE
_OLD_AFTER_S = 24 * 3600  # another source version's build unused this long is removed

_lock = threading.Lock()
_state: dict[str, object] = {"loaded": False, "lib": None, "reason": "not loaded yet", "info": {}}


def cache_dir() -> Path:
    root = os.environ.get("RNNKIT_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "rnnkit"


def library() -> ctypes.CDLL | None:
    """The loaded kernel library, found or built on first use; None where it cannot be had."""
    if _state["loaded"]:
        return _state["lib"]  # type: ignore[return-value]
    with _lock:
        if not _state["loaded"]:
            lib, info = _load()
            _state.update(loaded=True, lib=lib, reason=info.get("reason", ""), info=info)
        return _state["lib"]  # type: ignore[return-value]


def info() -> dict[str, object]:
    """How the kernels were had, after trying: `source` (prebuilt, cached or built), `variant`, `path` and
    `notes`; or `reason`, why there are none."""
    library()
    return dict(_state["info"])  # type: ignore[arg-type]


def status() -> str:
    """One line: `native (prebuilt|cached|built) VARIANT; BLAS: ...; threads: ...; PATH` or `aten (REASON)`."""
    lib = library()
    if lib is None:
        return f"aten ({_state['reason']})"
    import torch

    details = _state["info"]
    threads = f"torch's ({torch.get_num_threads()})" if lib.rnnkit_openmp() else "1 (built without OpenMP)"
    return "; ".join([f"native ({details['source']}) {details['variant']}", f"BLAS: {_blas_name()}",  # type: ignore[index]
                      f"threads: {threads}", *details["notes"], str(details["path"])])  # type: ignore[index]


def threads_used() -> int:
    """How many threads ran the kernels' latest threaded loop (0 before any)."""
    lib = library()
    return 0 if lib is None else int(lib.rnnkit_threads_used())


def _warn(message: str) -> None:
    log.warning("rnnkit: %s", message)


def _load() -> tuple[ctypes.CDLL | None, dict[str, object]]:
    """Find, build or refuse the library; (library or None, info)."""
    if os.environ.get("RNNKIT_NATIVE", "1") == "0":
        return None, {"reason": "disabled by RNNKIT_NATIVE=0"}
    supported = build.supported_variants()
    wanted = os.environ.get("RNNKIT_NATIVE_VARIANT")
    if wanted:
        if wanted not in supported:
            return None, {"reason": f"RNNKIT_NATIVE_VARIANT={wanted} is not one this CPU runs ({', '.join(supported)})"}
        supported = [wanted]
    try:
        key = build.source_key()
    except OSError:  # sources not shipped: a prebuilt library is taken as it is
        key = None
    found = _prebuilt(supported, key) or _cached_or_built(supported, key)
    lib, info = found
    if lib is None:
        return None, info
    try:
        _declare(lib)
    except (AttributeError, RuntimeError) as err:
        _warn(f"native kernels are not available ({info['path']} does not match its loader: {err}); reinstall "
              "rnnkit, or empty RNNKIT_CACHE; running the ATen paths")
        return None, {"reason": f"the library does not match its loader: {err}"}
    if problem := _check_blas(lib):
        _warn(f"native kernels are not available ({problem}); they call the LP64 MKL inside PyTorch's CPU wheels: "
              "use such a build of torch, or set RNNKIT_NATIVE=0 to go without them; running the ATen paths")
        return None, {"reason": problem}
    return lib, info


def _open(path: Path) -> ctypes.CDLL:
    import torch  # noqa: F401  (first: its OpenMP runtime is the one the library's libgomp.so.1 resolves to)

    return ctypes.CDLL(str(path))


def _prebuilt(variants: list[str], key: str | None):
    """The best prebuilt library in the package for these variants, or None."""
    if _prebuilt_dir is None:
        return None
    for variant in variants:
        path = _prebuilt_dir / build.library_filename(variant)
        if not path.exists():
            continue
        try:
            lib = _open(path)
        except OSError as err:
            log.debug("rnnkit: prebuilt kernels %s do not load: %s", path, err)
            continue
        if key is not None and _library_key(lib) != key:
            log.debug("rnnkit: prebuilt kernels %s are from other sources; not used", path)
            continue
        return lib, {"source": "prebuilt", "variant": variant, "path": str(path), "notes": []}
    return None


def _library_key(lib: ctypes.CDLL) -> str | None:
    try:
        fn = lib.rnnkit_source_key
    except AttributeError:
        return None
    fn.restype = ctypes.c_char_p
    return fn().decode()


def _cached_or_built(variants: list[str], key: str | None):
    """The library from the cache, or built into it (or into a private directory where the cache is not
    safe to load from)."""
    if key is None:
        return None, {"reason": "no prebuilt library for this CPU, and no sources to build one"}
    directory = cache_dir() / "native"
    problem = _unsafe_directory(directory)
    if problem is None:
        with _file_lock(directory / ".lock"):  # one process builds; the others wait here, then load its build
            found, problem = _from_cache(directory, variants, key)
            if found is None and problem is None:
                if (compiler := build.find_compiler()) is None:
                    return _no_compiler()
                found = _build(compiler, variants, key, directory, directory)
                if found[0] is not None:
                    _remove_old(directory, key)
            if found is not None:
                return found
    _warn(f"not loading kernels from the cache {directory}: {problem}; building them in a private directory "
          "instead (fix: make it yours alone, chmod go-w, or set RNNKIT_CACHE to a directory of your own)")
    if (compiler := build.find_compiler()) is None:
        return _no_compiler()
    private = Path(tempfile.mkdtemp(prefix="rnnkit-kernels-"))
    try:
        lib, info = _build(compiler, variants, key, private, None)
        if lib is not None:
            info["notes"].append(f"in a private directory ({problem})")
        return lib, info
    finally:  # the loaded library stays mapped; its file need not
        shutil.rmtree(private, ignore_errors=True)


def _from_cache(directory: Path, variants: list[str], key: str):
    """((library, info) or None, why the cached file is not safe or None). A file that does not load, or
    holds other sources' build, is removed (it is then built again)."""
    for variant in variants:
        path = directory / f"kernels-{key}-{variant}.so"
        if not path.exists():
            continue
        if (problem := _unsafe(path)) is not None:
            return None, problem
        try:
            lib = _open(path)
        except OSError as err:
            log.debug("rnnkit: cached kernels %s do not load (%s); building them again", path, err)
            lib = None
        if lib is None or _library_key(lib) != key:
            path.unlink(missing_ok=True)
            continue
        with contextlib.suppress(OSError):
            os.utime(path)  # in use: not old
        return (lib, {"source": "cached", "variant": variant, "path": str(path), "notes": []}), None
    return None, None


def _no_compiler():
    _warn("native kernels are not available: no C++ compiler found and no prebuilt library for this CPU; install "
          "g++ or clang++ (or set CXX), or install rnnkit from a wheel; running the slower ATen paths")
    return None, {"reason": "no C++ compiler found (install g++ or clang++, or set CXX) and no prebuilt library"}


def _build(compiler: str, variants: list[str], key: str, directory: Path, log_dir: Path | None):
    """Compile the best variant that builds into `directory` and load it; (library, info) or (None, info
    with the reason), with a warning."""
    failure: build.BuildError | OSError | None = None
    for variant in variants:
        path = directory / f"kernels-{key}-{variant}.so"
        started = time.perf_counter()
        try:
            build.compile_library(compiler, variant, path, key)
            lib = _open(path)
        except (build.BuildError, OSError) as err:
            failure = err
            continue
        notes = [f"built in {time.perf_counter() - started:.1f} s with {compiler}"]
        return lib, {"source": "built", "variant": variant, "path": str(path), "notes": notes}
    log_file = (log_dir or Path(tempfile.gettempdir())) / f"build-{key}.log"
    with contextlib.suppress(OSError):
        log_file.write_text(getattr(failure, "log", "") or str(failure), encoding="utf-8")
    _warn(f"native kernels are not available (the build failed: {failure}; log: {log_file}); fix the compiler or "
          "set CXX to another, or set RNNKIT_NATIVE=0 to go without them; running the ATen paths")
    return None, {"reason": f"build failed: {failure}"}


def _unsafe(path: Path) -> str | None:
    """Why `path` is not safe to load code from (None if it is): not owned by the current user, or
    writable by group or others. No check where the platform has no owners (Windows)."""
    if not hasattr(os, "getuid"):
        return None
    st = path.stat()
    if st.st_uid != os.getuid():
        return f"{path} is owned by uid {st.st_uid}, not by you"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by {'others' if st.st_mode & stat.S_IWOTH else 'its group'}"
    return None


def _unsafe_directory(directory: Path) -> str | None:
    """Create the cache directory (mode 0700) where missing; why it and its parent are unsafe, or None."""
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        return _unsafe(directory.parent) or _unsafe(directory)
    except OSError as err:
        return f"it cannot be used ({err})"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` across processes (where the platform has fcntl)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _remove_old(directory: Path, key: str) -> None:
    """Remove builds of other sources unused for a day (and temporary files of builds that died), and the
    logs of failed builds."""
    now = time.time()
    for path in directory.glob("*kernels-*"):
        with contextlib.suppress(OSError):
            if key not in path.name and now - path.stat().st_mtime > _OLD_AFTER_S:
                path.unlink()
    for path in directory.glob("build-*.log"):  # failures' logs: a build has succeeded since
        with contextlib.suppress(OSError):
            path.unlink()


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
        fwd.argtypes, fwd.restype = [p, p, p, p, i64, i64, i64], None
        bwd = getattr(lib, f"rnnkit_linear_backward_{dtype}")
        bwd.argtypes, bwd.restype = [p, p, p, i64, i64, i64], None
        check = getattr(lib, f"rnnkit_gemm_check_{dtype}")
        check.argtypes, check.restype = [p, i64, i64, i64, p, p, p, p], None
    lib.rnnkit_threads_used.restype = i64
    lib.rnnkit_openmp.restype = i64
    return lib


def _check_blas(lib: ctypes.CDLL) -> str | None:
    """Multiply small matrices through every GEMM path the kernels would take (as the sequence kernels call
    it: x W^T and d W) and compare with torch.mm; also that nothing is written past the outputs. The reason
    for the first mismatch, or None."""
    import torch

    generator = torch.Generator().manual_seed(0)  # not the global one: loading draws no random numbers
    B, N, K = 3, 264, 260  # wide enough for the packed copies' slices (one per thread, of 128 columns or more)
    for dtype, tol in ((torch.float32, 1e-4), (torch.float64, 1e-12)):
        W, x, d = (torch.randn(*shape, dtype=dtype, generator=generator) for shape in ((N, K), (B, K), (B, N)))
        keep: list = []
        paths = []
        fortran = _torch_blas().get(_fortran_name(dtype))
        if dtype == torch.float32 and _packing() is not None:
            paths.append(("MKL's packed sgemm", gemm_slots(W, B, keep)))
        if fortran:
            paths.append((_fortran_name(dtype), {"gemm_kind": 2, "gemm_fn": fortran, "weight_hh": W.data_ptr()}))
        for name, gemm in paths:
            guard = 7.25
            y, z = torch.full((B * N + 16,), guard, dtype=dtype), torch.full((B * K + 16,), guard, dtype=dtype)
            check = lib.rnnkit_gemm_check_f32 if dtype == torch.float32 else lib.rnnkit_gemm_check_f64
            check(Slots(GEMM_SLOTS, **gemm), B, N, K, x.data_ptr(), y.data_ptr(), d.data_ptr(), z.data_ptr())
            for got, want, label in ((y, x @ W.t(), "x W^T"), (z, d @ W, "d W")):
                body, tail = got[:want.numel()].view_as(want), got[want.numel():]
                if not bool((tail == guard).all()):
                    return f"BLAS check failed: {name} wrote past its output ({label})"
                if not torch.allclose(body, want, rtol=tol, atol=tol * want.abs().max().item()):
                    error = (body - want).abs().max().item()
                    return f"BLAS check failed: {name} differs from torch.mm by {error:.3g} ({label}, {dtype})"
    return None


def _fortran_name(dtype) -> str:
    import torch

    return "dgemm_" if dtype == torch.float64 else "sgemm_"


def _blas_name() -> str:
    symbols = _torch_blas()
    if _packing() is not None:
        return "MKL packed sgemm"
    if symbols.get("sgemm_") or symbols.get("dgemm_"):
        return "BLAS sgemm_/dgemm_"
    return "torch.mm from a Python loop"


# The slot names of the kernels' `enum Slot`s, in order (their counts are checked when the library loads).
GEMM_SLOTS = ("gemm_kind", "gemm_fn", "weight_hh", "packed_wt", "packed_w")
LNLSTM_SLOTS = ("T", "B", "H", "xp", "prod", "gain_hh", "gain_c", "bias_c", "mask", "rmask", "hs", "cs", "h_in",
                "r_hat", "r_rstd", "act", "c_new", "c_mean", "c_rstd", "tanh_c", "out", "grad_out", "dh_mm", "keep_h",
                "dc", "d_gates", "d_r", "d_gain_hh", "d_gain_c", "d_bias_c", "gain_ih", "shift_ih", "u_mean", "u_rstd",
                "d_gain_ih", "d_shift_ih", *GEMM_SLOTS, "threads")
CELL_SLOTS = ("T", "B", "H", "cell", "xp", "prod", "bias_hn", "mask", "rmask", "hs", "cs", "h_in", "act", "aux",
              "c_new", "out", "grad_out", "dh_mm", "keep_h", "dc", "d_xp", "d_prod", "d_bias_hn", "gain_ih", "shift_ih",
              "u_mean", "u_rstd", "gain_hh", "r_hat", "r_rstd", "d_gain_ih", "d_shift_ih", "d_gain_hh", "peep_i",
              "peep_f", "peep_o", "d_peep_i", "d_peep_f", "d_peep_o", "bias_x", "d_bias_x", *GEMM_SLOTS, "threads")
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
_SLICE_COLUMNS = 128  # the packed copies' slices are at least this wide (gemm_slots)


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
        # The integers as gemm.h passes them (BlasInt): 64 bits wide on x86-64, which reads the same to the
        # LP64 and the ILP64 interface.
        c_int = ctypes.c_int64 if build.is_x86_64() else ctypes.c_int
        symbols, c_void_p = _torch_blas(), ctypes.c_void_p
        _blas["packing"] = None
        if all(symbols.get(n) for n in ("cblas_sgemm_pack_get_size", "cblas_sgemm_pack", "cblas_sgemm_compute")):
            _blas["packing"] = (
                ctypes.CFUNCTYPE(ctypes.c_size_t, c_int, c_int, c_int, c_int)(symbols["cblas_sgemm_pack_get_size"]),
                ctypes.CFUNCTYPE(None, c_int, c_int, c_int, c_int, c_int, c_int, ctypes.c_float, c_void_p, c_int,
                                 c_void_p)(symbols["cblas_sgemm_pack"]))
    return _blas["packing"]  # type: ignore[return-value]


def gemm_slots(weight_hh, batch_size: int, keep: list, backward: bool = True) -> dict[str, int] | None:
    """The GEMM slots for a sequence call with recurrent weights `weight_hh` (G, H) and `batch_size` rows:
    packed copies of W_hh for float32 (the backward's only with `backward`), the Fortran GEMM for float64;
    None where PyTorch's library offers neither (the caller then runs the time loop in Python with
    torch.mm). What the kernels read (the packed copies, their tables) is appended to `keep`, which the
    caller holds for the call.

    The packed copies come in slices of the product's columns, one per thread that will multiply them
    (gemm.h: each slice's product on its own thread beats MKL's split of the whole 32-row product)."""
    import torch

    symbols = _torch_blas()
    weight_hh = weight_hh.detach().contiguous()
    keep.append(weight_hh)
    G, H = weight_hh.shape
    if weight_hh.dtype == torch.float32 and (packing := _packing()) is not None:
        size, pack = packing
        row_major, b_matrix, no_trans, trans = 101, 162, 111, 112
        threads, tables = torch.get_num_threads(), []
        # x (B, H) @ W^T -> (B, G): columns lo..hi are W's rows lo..hi; d (B, G) @ W -> (B, H): W's columns.
        for n, k, t, step in ((G, H, trans, H), (H, G, no_trans, 1))[:2 if backward else 1]:
            parts = max(1, min(threads, n // _SLICE_COLUMNS))
            table = [parts]
            for part in range(parts):
                lo, hi = n * part // parts, n * (part + 1) // parts
                buffer = torch.empty(size(b_matrix, batch_size, hi - lo, k) + 64, dtype=torch.uint8)
                pack(row_major, b_matrix, t, batch_size, hi - lo, k, 1.0,
                     weight_hh.data_ptr() + lo * step * weight_hh.element_size(), H, buffer.data_ptr())
                keep.append(buffer)
                table.append(buffer.data_ptr())
            tables.append(torch.tensor(table, dtype=torch.int64))
        keep.extend(tables)
        return {"gemm_kind": 1, "gemm_fn": symbols["cblas_sgemm_compute"], "weight_hh": weight_hh.data_ptr(),
                "packed_wt": tables[0].data_ptr(), "packed_w": tables[1].data_ptr() if backward else 0}
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
    as the kernel may read it; ctypes passes it as the array (`_as_parameter_`). A `threads` slot not given
    is torch's thread count now."""

    def __init__(self, names: tuple[str, ...], **values: object) -> None:
        if "threads" in names and "threads" not in values:
            import torch

            values["threads"] = torch.get_num_threads()
        slots = [0] * len(names)
        for name, value in values.items():
            slots[names.index(name)] = value.data_ptr() if hasattr(value, "data_ptr") else int(value or 0)
        self.tensors = [v for v in values.values() if hasattr(v, "data_ptr")]
        self._as_parameter_ = (ctypes.c_int64 * len(slots))(*slots)
