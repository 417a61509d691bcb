"""How rnnkit's native kernels are compiled: the sources, the flags, one library per CPU variant.

Two routes lead to a library, with the same flags:

- ahead of time, by setup.py, for `pip install .` and wheels: every variant of the platform, into the package
  (setup.py loads this file by its path, so nothing here imports torch or rnnkit);
- on first use, by the loader (`__init__.py`), where the package holds no library (an editable install, a
  checkout): the variant of this CPU, into the cache.

Flags. No `-ffast-math`: GCC links `crtfastmath.o` into a library built with it, whose constructor sets
flush-to-zero and denormals-are-zero for the whole process as the library loads. What fast math bought the
kernels was vectorised exp and tanh (GCC calls glibc's vector functions only under `-ffast-math`); `vmath.h`
has its own, which any compiler vectorises. The flags kept change no result: `-fno-math-errno` (sqrt need not
set errno) and `-fno-trapping-math` (the compiler may turn the masked loops' branches into selects); and
`-ffp-contract=fast` fuses a product and a sum into one FMA instruction where the CPU has it (GCC's default
for C++ anyway, spelt out for other compilers).

Variants. On x86-64, the psABI levels instead of `-march=native`, chosen at load from the CPU's features:
`x86-64-v4` (AVX-512), `x86-64-v3` (AVX2 and FMA), `x86-64` (SSE2, any x86-64). Elsewhere one `generic`
library. A wheel thus runs on any CPU of its platform, and the numbers depend on the CPU that runs them (the
vector width, FMA), never on the machine that built them.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

HERE = Path(__file__).parent
SOURCES = ("lnlstm.cpp", "cells.cpp", "library.cpp")
HEADERS = ("gemm.h", "norm.h", "parallel.h", "vmath.h")
FLAGS = ("-O3", "-std=c++17", "-fPIC", "-fvisibility=hidden", "-fno-math-errno", "-fno-trapping-math",
         "-ffp-contract=fast")
LINK = ("-shared",)
OPENMP = "-fopenmp"
# Best first. The x86-64 levels as in the x86-64 psABI: v3 adds AVX, AVX2, BMI1/2, F16C, FMA, LZCNT and
# MOVBE to the baseline; v4 adds AVX-512 F, BW, CD, DQ and VL.
X86_VARIANTS = {"x86-64-v4": ("-march=x86-64-v4",), "x86-64-v3": ("-march=x86-64-v3",),
                "x86-64": ("-march=x86-64", "-mtune=generic")}
GENERIC = {"generic": ()}
_V3 = {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}
_V4 = _V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
_REQUIRES = {"x86-64-v4": _V4, "x86-64-v3": _V3, "x86-64": set()}


class BuildError(RuntimeError):
    """A compiler failed; `log` holds its full output."""

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message)
        self.log = log


def is_x86_64(machine: str | None = None) -> bool:
    return (machine or platform.machine()).lower() in ("x86_64", "amd64", "x64")


def variants(machine: str | None = None) -> dict[str, tuple[str, ...]]:
    """The platform's variants, best first, with their flags."""
    return X86_VARIANTS if is_x86_64(machine) else GENERIC


def _cpu_features() -> set[str] | None:
    """The x86 CPU's feature names as Linux spells them in /proc/cpuinfo (which lists only what the
    operating system enables), from sysctl on macOS; None where neither says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.features", "machdep.cpu.leaf7_features",
                                  "machdep.cpu.extfeatures"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        names = {"avx1.0": "avx", "osxsave": "xsave", "lzcnt": "abm"}
        return {names.get(word, word) for word in out.lower().split()}
    return None


def supported_variants() -> list[str]:
    """The variants this CPU runs, best first (the baseline alone where its features cannot be read)."""
    if not is_x86_64():
        return list(GENERIC)
    features = _cpu_features() or set()
    if "lzcnt" in features:
        features.add("abm")
    return [name for name in X86_VARIANTS if _REQUIRES[name] <= features]


def source_key() -> str:
    """A hash of the sources and the flags: the library of one key computes what the sources say."""
    digest = hashlib.sha256()
    for name in (*SOURCES, *HEADERS):
        digest.update(name.encode() + b"\0" + (HERE / name).read_bytes() + b"\0")
    for flags in (FLAGS, LINK, (OPENMP,), *(f for v in (X86_VARIANTS, GENERIC) for f in v.items())):
        digest.update(repr(flags).encode())
    return digest.hexdigest()[:16]


def library_filename(variant: str) -> str:
    """The file name of a variant's library in the package (a wheel's, or one built in place)."""
    return f"_kernels_{variant.replace('-', '_')}{'.dll' if os.name == 'nt' else '.so'}"


def find_compiler() -> str | None:
    """$CXX, else the first of c++, g++, clang++ on PATH."""
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def compile_library(compiler: str, variant: str, output: Path, key: str | None = None) -> str:
    """Build one variant's library at `output`, atomically (a temporary file in the same directory, then
    renamed, so that no process ever loads a partial file). Returns "" or "without OpenMP" when the compiler
    has no OpenMP (the kernels then run on one thread); raises BuildError."""
    flags = variants()[variant]
    key = key or source_key()
    defines = (f'-DRNNKIT_SOURCE_KEY="{key}"', f'-DRNNKIT_VARIANT="{variant}"')
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    os.close(fd)
    try:
        logs = []
        for openmp in ((OPENMP,), ()):
            command = [compiler, *FLAGS, *flags, *defines, *(str(HERE / s) for s in SOURCES), *LINK, *openmp,
                       "-o", tmp]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=600)
            except (OSError, subprocess.SubprocessError) as err:
                raise BuildError(f"{compiler} could not run: {err}") from err
            logs.append(" ".join(command) + "\n" + done.stdout + done.stderr)
            if done.returncode == 0:
                os.chmod(tmp, 0o755)  # as a file installed from a wheel: readable, writable by its owner only
                os.replace(tmp, output)
                return "" if openmp else "without OpenMP"
        first = next((line.strip() for line in logs[0].splitlines()[1:] if "error" in line), "")
        raise BuildError(f"{compiler} failed on the {variant} kernels" + (f": {first}" if first else ""),
                         "\n".join(logs))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build_all(directory: Path, compiler: str, names: Iterable[str] | None = None
              ) -> tuple[dict[str, str], dict[str, BuildError]]:
    """Every variant of the platform (or `names`) into `directory`, as many compilers at once as there are
    cores. Returns ({variant: "" or a note} for those built, {variant: error} for those that failed: an older
    compiler may not know the newer levels' names)."""
    from concurrent.futures import ThreadPoolExecutor

    names = list(names or variants())
    key = source_key()
    built: dict[str, str] = {}
    failed: dict[str, BuildError] = {}

    def one(name: str) -> None:
        try:
            built[name] = compile_library(compiler, name, directory / library_filename(name), key)
        except BuildError as err:
            failed[name] = err

    with ThreadPoolExecutor(max_workers=max(1, min(len(names), os.cpu_count() or 1))) as pool:
        list(pool.map(one, names))
    return built, failed
