"""Compile rnnkit's native kernels ahead of time into the package: `pip install .` and wheels carry them.

Everything else about the package is in pyproject.toml. The kernels are plain shared libraries loaded with
ctypes, not Python extension modules: one per CPU variant of the platform (rnnkit/kernels/native/build.py),
with no PyTorch headers, so that one wheel serves every CPU of its platform, every Python 3 and every torch
version (tag py3-none-PLATFORM). An editable install compiles nothing here: the kernels are built on first
use from the checkout's sources, as before. `RNNKIT_BUILD_KERNELS=0` skips the build (the package is then pure
Python, and builds its kernels on first use where a compiler is).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
NATIVE = Path("rnnkit", "kernels", "native")
WANTED = os.environ.get("RNNKIT_BUILD_KERNELS", "1") != "0"


def _kernels_build():
    """rnnkit/kernels/native/build.py, loaded by its path (importing rnnkit would import torch)."""
    spec = importlib.util.spec_from_file_location("_rnnkit_native_build", ROOT / NATIVE / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class KernelDistribution(Distribution):
    """A distribution with compiled code (so the wheel is platform-specific), unless the build is skipped."""

    def has_ext_modules(self) -> bool:
        return WANTED


class BuildKernels(build_ext):
    """Compile every variant's library into the build directory (or the source tree with --inplace)."""

    def run(self) -> None:
        self._outputs: list[str] = []
        if not WANTED or self.editable_mode:
            return
        build = _kernels_build()
        compiler = build.find_compiler()
        if compiler is None:
            raise SystemExit("rnnkit: no C++ compiler to build the native kernels: install g++ or clang++ (or set "
                             "CXX), or set RNNKIT_BUILD_KERNELS=0 to install without them")
        target = (ROOT if self.inplace else Path(self.build_lib)) / NATIVE
        built, failed = build.build_all(target, compiler)
        for name, error in failed.items():
            print(f"rnnkit: the {name} kernels did not build ({error}); CPUs of that level will use the next one")
        if not built:
            log = next(iter(failed.values())).log
            raise SystemExit(f"rnnkit: no variant of the native kernels built with {compiler}:\n{log[-4000:]}\n"
                             "fix the compiler (or set CXX), or set RNNKIT_BUILD_KERNELS=0 to install without them")
        for name, note in built.items():
            print(f"rnnkit: built the {name} kernels{f' ({note})' if note else ''}")
        self._outputs = [str(target / build.library_filename(name)) for name in built]

    def get_outputs(self) -> list[str]:
        return list(getattr(self, "_outputs", []))


class Wheel(bdist_wheel):
    """py3-none-PLATFORM: the libraries depend on the platform only."""

    def get_tag(self) -> tuple[str, str, str]:
        python, abi, plat = super().get_tag()
        return ("py3", "none", plat) if WANTED else (python, abi, plat)


setup(distclass=KernelDistribution, cmdclass={"build_ext": BuildKernels, "bdist_wheel": Wheel})
