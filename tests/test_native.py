"""rnnkit's native kernels as a library: where it comes from (prebuilt in the package, the cache, a first-use
build), what is checked when it loads, and that it leaves the rest of the process alone.

What needs a fresh process (a first load, other environment variables) runs in a subprocess. A stand-in
compiler (a shell script that records its call and copies the library this process loaded) spares the cache
tests a compilation each; the real compiler runs in the failed-build test and in the wheel test, which builds
a wheel from the checkout, installs it into a fresh virtual environment and runs its kernels with no compiler
on PATH. The kernels' numbers are checked in test_kernels.py, test_layers.py and test_cells.py.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import shutil
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
import torch

from rnnkit.kernels import native
from rnnkit.kernels.native import build

ROOT = Path(__file__).resolve().parents[1]
HAVE_COMPILER = build.find_compiler() is not None
POSIX = os.name == "posix"


@pytest.fixture
def kernels():
    """The library this process loaded (skips where there is none)."""
    lib = native.library()
    if lib is None:
        pytest.skip(f"no native kernels here: {native.status()}")
    return lib


def _env(**changes: str | None) -> dict[str, str]:
    """This environment for a subprocess that imports the checkout's rnnkit, with `changes` (None removes)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def _python(code: str, env: dict[str, str], timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=timeout, **kwargs)


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("rnnkit: ")]


def _cache_route(code: str) -> str:
    """`code` in a process that takes the cache route: no prebuilt library, whatever the package holds."""
    return "from rnnkit.kernels import native\nnative._prebuilt_dir = None\n" + textwrap.dedent(code)


def _stand_in_compiler(tmp_path: Path, delay: float = 0.0) -> tuple[Path, Path]:
    """A C++ compiler's stand-in: it appends a line to `calls` for each call, waits `delay` seconds, then
    copies the library this process loaded (built from the same sources) to its -o argument."""
    calls, script = tmp_path / "compiler-calls", tmp_path / "stand-in-c++"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        echo "$$" >> "{calls}"
        sleep {delay}
        out=""
        while [ $# -gt 0 ]; do
            if [ "$1" = "-o" ]; then out="$2"; fi
            shift
        done
        cp "{native.info()['path']}" "$out"
        """))
    script.chmod(0o755)
    return script, calls


def _calls(calls: Path) -> int:
    return len(calls.read_text().split()) if calls.exists() else 0


# ------------------------------------------------------------------------------------------ side effects


@pytest.mark.skipif(not (HAVE_COMPILER or native.library() is not None), reason="no native kernels here")
def test_the_process_keeps_its_subnormals_and_threads_after_every_kernel():
    """Loading the kernels and running every kind of them, forward and backward, in float32 and float64, on
    one thread and on two, leaves subnormal numbers working in torch (its own threads included) and numpy, in
    the main thread and a new one, and torch's thread settings as they were. (A library linked with
    -ffast-math sets flush-to-zero for the whole process as it loads: 1e-39 * 1.0 is then 0.)"""
    code = """
        import threading

        import numpy as np
        import torch

        from rnnkit import Recurrent
        from rnnkit.kernels import native

        def subnormals_work():
            tiny = 1e-39
            found = [(torch.tensor([tiny]) * 1.0).item() != 0,
                     bool((torch.full((1 << 18,), tiny) * 1.0).ne(0).all()),  # split between torch's threads
                     float(np.float32(tiny) * np.float32(1.0)) != 0, float(np.float64(5e-324) * 1.0) != 0,
                     float(np.float32(tiny)) + 0.0 == float(np.float32(tiny))]
            thread = threading.Thread(target=lambda: found.append((torch.tensor([tiny]) * 1.0).item() != 0))
            thread.start()
            thread.join()
            return all(found)

        torch.set_num_threads(2)
        settings = (torch.get_num_threads(), torch.get_num_interop_threads())
        assert subnormals_work(), "before"
        assert native.library() is not None, native.status()
        assert subnormals_work(), "after loading"
        cells = ["rnn", "rnn-relu", "lstm", "gru", "layernorm-lstm", "layernorm-gru", "peephole-lstm", "mingru",
                 "minlstm"]
        for threads, hidden in ((1, 16), (2, 256)):  # B * 4H >= 16384: the kernels split rows between threads
            torch.set_num_threads(threads)
            for cell in cells:
                for dtype in (torch.float32, torch.float64):
                    layer = Recurrent(cell, 4, hidden, num_layers=2).to(dtype)
                    x = torch.randn(16, 5, 4, dtype=dtype, requires_grad=True)
                    out, _ = layer(x, lengths=torch.tensor([5, 3] * 8))
                    out.sum().backward()
                    with native.python_loop():
                        layer(x)[0].sum().backward()
                    with torch.no_grad():  # the streaming step kernel
                        layer.step(x[:, 0].detach())
                    assert subnormals_work(), (cell, dtype, threads)
        torch.set_num_threads(2)
        assert (torch.get_num_threads(), torch.get_num_interop_threads()) == settings
        print(native.status())
        """
    done = _python(code, _env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("native ("), done.stdout


def test_the_kernels_follow_torchs_thread_count(kernels):
    """Each call runs on as many threads as torch.set_num_threads says (threads_used() reports how many ran
    the latest threaded loop): the plain cells', the layer-norm LSTM's and the linear recurrence's loops."""
    from rnnkit import Recurrent

    torch.manual_seed(0)
    layers = [Recurrent("lstm", 8, 512), Recurrent("layernorm-lstm", 8, 512), Recurrent("mingru", 8, 512)]
    x = torch.randn(8, 70, 8)  # B * 4H = 16384 rows' worth; minGRU: 8 * 512 columns in 16 blocks, T * 256 >= 16384
    previous = torch.get_num_threads()
    try:
        for threads in (2, 1, 2):
            torch.set_num_threads(threads)
            for layer in layers:
                layer(x)[0].sum().backward()
                assert native.threads_used() == threads, (layer.cell_name, threads)
    finally:
        torch.set_num_threads(previous)


# ------------------------------------------------------------------------------------------ checks at load


@pytest.mark.parametrize("symbol", ["sgemm_", "dgemm_", "cblas_sgemm_compute"])
def test_the_blas_check_catches_a_gemm_that_computes_something_else(kernels, monkeypatch, symbol):
    """The check at load runs every GEMM the kernels would call on a small product and compares with
    torch.mm; a function that returns without computing (standing in for a BLAS that reads its arguments
    differently) fails it, and the reason names it."""
    assert native._check_blas(kernels) is None
    if not native._torch_blas().get(symbol):
        pytest.skip(f"PyTorch's library has no {symbol}")
    noop = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 13)(lambda *args: None)
    monkeypatch.setitem(native._blas, "symbols", {**native._torch_blas(), symbol: ctypes.cast(noop, ctypes.c_void_p).value})
    reason = native._check_blas(kernels)
    assert reason is not None and reason.startswith("BLAS check failed") and "differs from torch.mm" in reason
    assert ("packed" in reason) if symbol.startswith("cblas") else (symbol in reason)


@pytest.mark.skipif(not (HAVE_COMPILER or native.library() is not None), reason="no native kernels here")
def test_a_failed_blas_check_leaves_rnnkit_on_aten_with_one_warning():
    code = """
        import ctypes

        import torch

        from rnnkit import Recurrent
        from rnnkit.kernels import native

        noop = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 13)(lambda *args: None)
        native._blas["symbols"] = {**native._torch_blas(), "sgemm_": ctypes.cast(noop, ctypes.c_void_p).value}
        print(native.status())
        torch.manual_seed(0)
        layer = Recurrent("layernorm-lstm", 3, 5)
        for _ in range(2):
            out, _ = layer(torch.randn(2, 4, 3))
            out.sum().backward()
        print(native.library() is None, bool(torch.isfinite(layer.weight_hh_l0.grad).all()))
        """
    done = _python(code, _env())
    assert done.returncode == 0, done.stderr
    status, result = done.stdout.splitlines()[:2]
    assert status.startswith("aten (BLAS check failed: sgemm_ differs from torch.mm"), status
    assert result == "True True"
    warnings = _warnings(done.stderr)
    assert len(warnings) == 1 and "native kernels are not available" in warnings[0], done.stderr
    assert "RNNKIT_NATIVE=0" in warnings[0]


@pytest.mark.skipif(not POSIX, reason="the build routes are tested on POSIX")
def test_a_failed_build_falls_back_to_the_aten_paths(tmp_path):
    """A compiler that fails (here `false` as CXX, with an empty cache) leaves rnnkit on its ATen paths: the
    status says why, one warning line names the fix and the log, and a layer-norm LSTM still trains, with the
    same numbers as with the kernels the real compiler builds."""
    code = _cache_route(
        "import torch; from rnnkit import Recurrent\n"
        "torch.manual_seed(0); layer = Recurrent('layernorm-lstm', 3, 5).double()\n"
        "x = torch.randn(2, 4, 3, dtype=torch.float64)\n"
        "out, _ = layer(x); out.sum().backward(); layer(x)[0].sum().backward()\n"
        "print(native.status()); print(repr(out.sum().item())); print(repr(layer.weight_hh_l0.grad.sum().item()))\n"
    )
    false = shutil.which("false")
    if false is None:
        pytest.skip("no `false` command to stand in for a broken compiler")
    env = _env(RNNKIT_CACHE=str(tmp_path / "cache"), CXX=false)
    broken = _python(code, env, timeout=120)
    assert broken.returncode == 0, broken.stderr
    status, out_sum, grad_sum = broken.stdout.splitlines()[:3]
    assert status.startswith("aten (build failed: "), status
    warnings = _warnings(broken.stderr)
    assert len(warnings) == 1, broken.stderr  # said once
    assert "native kernels are not available" in warnings[0] and "set CXX" in warnings[0]
    log_file = Path(warnings[0].split("log: ")[1].split(")")[0])
    assert log_file.exists() and false in log_file.read_text()
    if not HAVE_COMPILER:
        return
    env.pop("CXX")
    built = _python(code, env)
    assert built.returncode == 0, built.stderr
    native_status, native_out, native_grad = built.stdout.splitlines()[:3]
    assert native_status.startswith("native (built) "), native_status
    assert float(native_out) == pytest.approx(float(out_sum), rel=1e-10)
    assert float(native_grad) == pytest.approx(float(grad_sum), rel=1e-10)
    assert not log_file.exists()  # a later successful build clears the old log


@pytest.mark.skipif(not POSIX, reason="the build routes are tested on POSIX")
def test_no_compiler_and_no_prebuilt_library_warn_once_and_run_aten(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    code = _cache_route("""
        import torch
        from rnnkit import Recurrent

        for cell in ("lstm", "layernorm-lstm", "mingru"):
            layer = Recurrent(cell, 3, 5)
            layer(torch.randn(2, 4, 3))[0].sum().backward()
        print(native.status())
        """)
    done = _python(code, _env(PATH=str(empty), CXX=None, RNNKIT_CACHE=str(tmp_path / "cache")))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("aten (no C++ compiler found"), done.stdout
    warnings = _warnings(done.stderr)
    assert len(warnings) == 1 and "install g++ or clang++" in warnings[0], done.stderr


def test_a_variant_this_cpu_cannot_run_is_refused(monkeypatch):
    monkeypatch.setenv("RNNKIT_NATIVE_VARIANT", "no-such-cpu")
    lib, info = native._load()
    assert lib is None and "RNNKIT_NATIVE_VARIANT=no-such-cpu is not one this CPU runs" in info["reason"]


def test_the_cpu_variant_follows_the_cpu_features(monkeypatch):
    v3 = {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave", "sse2"}
    v4 = v3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
    monkeypatch.setattr(build, "is_x86_64", lambda machine=None: True)
    for features, expected in ((v4, ["x86-64-v4", "x86-64-v3", "x86-64"]), (v3, ["x86-64-v3", "x86-64"]),
                               (v3 - {"fma"}, ["x86-64"]), (v4 - {"avx512vl"}, ["x86-64-v3", "x86-64"]),
                               (None, ["x86-64"])):
        monkeypatch.setattr(build, "_cpu_features", lambda features=features: None if features is None else set(features))
        assert build.supported_variants() == expected
    monkeypatch.setattr(build, "is_x86_64", lambda machine=None: False)
    assert build.supported_variants() == ["generic"]


# ------------------------------------------------------------------------------------------ prebuilt, cache


def test_a_prebuilt_library_is_taken_only_when_built_from_the_sources_beside_it(kernels, tmp_path, monkeypatch):
    variant, key = native.info()["variant"], build.source_key()
    shipped = tmp_path / "package"
    shipped.mkdir()
    shutil.copy(native.info()["path"], shipped / build.library_filename(variant))
    monkeypatch.setattr(native, "_prebuilt_dir", shipped)
    lib, found = native._prebuilt([variant], key)
    assert found["source"] == "prebuilt" and found["path"] == str(shipped / build.library_filename(variant))
    assert native._library_key(lib) == key
    # The same library with another key compiled in (its bytes changed in the file): left from older sources.
    data = (shipped / build.library_filename(variant)).read_bytes()
    assert data.count(key.encode()) == 1
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / build.library_filename(variant)).write_bytes(data.replace(key.encode(), b"0" * len(key)))
    monkeypatch.setattr(native, "_prebuilt_dir", stale)
    assert native._prebuilt([variant], key) is None
    assert native._prebuilt([variant], None) is not None  # no sources to compare with: taken as it is


@pytest.mark.skipif(not POSIX or not shutil.which("sh"), reason="the stand-in compiler is a POSIX shell script")
@pytest.mark.parametrize("unsafe", ["directory writable by others", "library writable by its group",
                                    "library owned by another user"])
def test_an_unsafe_cache_is_not_loaded_from(kernels, tmp_path, unsafe):
    """A cache directory or library that someone else could write is not loaded from: the library is built
    in a private directory instead, with one warning naming the fix; nothing is written into the cache."""
    if unsafe.endswith("another user") and os.getuid() != 0:
        pytest.skip("giving a file to another user takes root")
    compiler, calls = _stand_in_compiler(tmp_path)
    cache = tmp_path / "cache"
    directory = cache / "native"
    directory.mkdir(parents=True, mode=0o700)
    planted = directory / f"kernels-{build.source_key()}-{native.info()['variant']}.so"
    shutil.copy(native.info()["path"], planted)
    if unsafe.startswith("directory"):
        directory.chmod(0o777)
    elif unsafe.endswith("group"):
        planted.chmod(0o775)
    else:
        os.chown(planted, 65534, 65534)
    def cached():
        return sorted(p.name for p in directory.iterdir() if p.name != ".lock")

    before = cached()
    done = _python(_cache_route("print(native.status())"), _env(RNNKIT_CACHE=str(cache), CXX=str(compiler)))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("native (built) ") and "in a private directory" in done.stdout, done.stdout
    assert str(directory) not in done.stdout.split(";")[-1]  # loaded from elsewhere
    warnings = _warnings(done.stderr)
    assert len(warnings) == 1 and f"not loading kernels from the cache {directory}" in warnings[0], done.stderr
    assert "RNNKIT_CACHE" in warnings[0]
    assert _calls(calls) == 1
    assert cached() == before


@pytest.mark.skipif(not POSIX or not shutil.which("sh"), reason="the stand-in compiler is a POSIX shell script")
def test_two_first_builds_at_once_build_once_and_old_builds_go(kernels, tmp_path):
    """Two processes that want the kernels at the same moment on a cold cache (torchrun ranks): one builds,
    the other waits on the lock and loads that build. Builds of other sources unused for a day are removed,
    recent ones kept (another checkout may be using them)."""
    compiler, calls = _stand_in_compiler(tmp_path, delay=2.0)
    cache = tmp_path / "cache"
    directory = cache / "native"
    directory.mkdir(parents=True, mode=0o700)
    old, recent = directory / "kernels-0123456789abcdef-x86-64.so", directory / "kernels-fedcba9876543210-x86-64.so"
    for path in (old, recent):
        path.write_bytes(b"")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(old, (two_days_ago, two_days_ago))
    code = _cache_route(f"""
        import os, time
        from pathlib import Path
        Path({str(tmp_path)!r}, f"ready-{{os.getpid()}}").touch()
        while len(list(Path({str(tmp_path)!r}).glob("ready-*"))) < 2:  # both start loading together
            time.sleep(0.01)
        print(native.info()["source"])
        """)
    env = _env(RNNKIT_CACHE=str(cache), CXX=str(compiler))
    runs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    for run, (_, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, err
    assert sorted(out.strip() for out, _ in outputs) == ["built", "cached"]
    assert _calls(calls) == 1
    assert not old.exists() and recent.exists()
    assert (directory / f"kernels-{build.source_key()}-{native.info()['variant']}.so").exists()


# ------------------------------------------------------------------------------------------ the package


def test_version_says_which_kernels_run(capsys):
    from rnnkit import __version__
    from rnnkit.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code in (0, None)
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [f"rnnkit {__version__}", f"torch {torch.__version__}"]
    assert len(lines) == 3 and lines[2] == f"kernels: {native.status()}"
    assert lines[2].startswith(("kernels: native (prebuilt) ", "kernels: native (cached) ", "kernels: native (built) ",
                                "kernels: aten ("))


def _setuptools_builds_wheels() -> bool:
    try:
        major, minor = (int(p) for p in importlib.metadata.version("setuptools").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (70, 1)


@pytest.mark.skipif(not (POSIX and HAVE_COMPILER and build.is_x86_64()), reason="builds x86-64 wheels with a compiler")
@pytest.mark.skipif(not _setuptools_builds_wheels(), reason="needs setuptools>=70.1 (the dev extras)")
def test_a_wheel_carries_the_kernels_and_runs_them_without_a_compiler(tmp_path):
    """`pip wheel .` from a copy of the checkout gives a py3-none-PLATFORM wheel with one library per x86-64
    level; installed into a fresh virtual environment (torch from this one), with no compiler on PATH and an
    empty cache, it runs its prebuilt kernels, and each variant this CPU runs computes the same numbers."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "rnnkit", source / "rnnkit", ignore=shutil.ignore_patterns("__pycache__", "_kernels_*"))
    dist = tmp_path / "dist"
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                           "--no-index", "-q", "-w", str(dist)], capture_output=True, text=True, timeout=900,
                          env=_env(PYTHONPATH=None))
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = dist.glob("*.whl")
    assert wheel.name.startswith("rnnkit-") and wheel.name.endswith("-py3-none-linux_x86_64.whl"), wheel.name
    names = set(zipfile.ZipFile(wheel).namelist())
    for variant in build.X86_VARIANTS:
        assert f"rnnkit/kernels/native/{build.library_filename(variant)}" in names
    assert {f"rnnkit/kernels/native/{n}" for n in (*build.SOURCES, *build.HEADERS)} <= names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "outer.pth").write_text(str(Path(torch.__file__).parents[1]) + "\n")  # torch, numpy, ...
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                           "-q", str(wheel)], capture_output=True, text=True, timeout=300, env=_env(PYTHONPATH=None))
    assert done.returncode == 0, done.stdout + done.stderr

    env = {"PATH": str(venv / "bin"), "HOME": str(tmp_path), "RNNKIT_CACHE": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1"}
    assert not any(shutil.which(c, path=env["PATH"]) for c in ("c++", "g++", "clang++", "cc", "gcc"))
    version = subprocess.run([str(venv / "bin" / "rnnkit"), "--version"], capture_output=True, text=True, env=env,
                             cwd=tmp_path, timeout=300)
    assert version.returncode == 0, version.stderr
    kernels_line = version.stdout.splitlines()[2]
    assert kernels_line.startswith("kernels: native (prebuilt) "), version.stdout
    assert str(venv) in kernels_line and not _warnings(version.stderr), version.stderr

    code = """
        import torch
        import rnnkit
        from rnnkit import Recurrent
        from rnnkit.kernels import native

        assert native.info()["source"] == "prebuilt", native.status()
        print(rnnkit.__file__)
        for cell, dtype in (("lstm", torch.float32), ("layernorm-lstm", torch.float64), ("gru", torch.float64)):
            torch.manual_seed(0)
            layer = Recurrent(cell, 3, 16, num_layers=2).to(dtype)
            out, _ = layer(torch.randn(4, 9, 3, dtype=dtype), lengths=torch.tensor([9, 2, 5, 9]))
            out.square().sum().backward()
            print(repr(out.square().sum().item()), repr(layer.weight_hh_l0.grad.square().sum().item()))
        """
    results = {}
    for variant in build.supported_variants():
        run = subprocess.run([str(python), "-c", textwrap.dedent(code)], capture_output=True, text=True,
                             env={**env, "RNNKIT_NATIVE_VARIANT": variant}, cwd=tmp_path, timeout=300)
        assert run.returncode == 0, run.stderr
        lines = run.stdout.splitlines()
        assert lines[0].startswith(str(venv)), lines[0]  # the installed package, not the checkout
        results[variant] = [[float(v) for v in line.split()] for line in lines[1:]]
    reference = results[build.supported_variants()[-1]]  # the baseline x86-64
    for variant, values in results.items():
        for (out, grad), (ref_out, ref_grad), rel in zip(values, reference, (1e-4, 1e-10, 1e-10), strict=True):
            assert out == pytest.approx(ref_out, rel=rel), variant
            assert grad == pytest.approx(ref_grad, rel=rel), variant
