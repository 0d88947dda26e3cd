"""The compiled part of Roost: the CPU kernels of `cpu int8` / `cpu int4` (engine/csrc/native.cpp).

Everything else is declared in pyproject.toml. The kernels are built with the wheel (and so with
the bundles, and with `pip install -e .`), never on a user's machine at run time. They are
optional: where no C++ compiler works, the build says so in one line and Roost installs without
them, running its PyTorch path (roost.engine.native says why at run time, `roost doctor` too).
"""

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

if sys.platform == "win32":
    FLAGS = ["/O2", "/std:c++17", "/EHsc"]
else:
    # (no contraction of a * b + c into fused multiply-adds: the vectorised conversions round as
    # the portable ones, so that every instruction set makes the same blocks)
    FLAGS = ["-O3", "-std=c++17", "-fvisibility=hidden", "-ffp-contract=off"]


class OptionalKernels(build_ext):
    """Builds the kernels where a compiler works; else one line, and the install goes on."""

    def run(self):
        try:
            super().run()
        except Exception as e:  # noqa: BLE001 (no compiler, a broken one: any failure)
            self._without(e)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as e:  # noqa: BLE001
            self._without(e)

    @staticmethod
    def _without(e: Exception) -> None:
        print(f"roost: the compiled CPU kernels were not built ({type(e).__name__}: {str(e).strip()[:200]}); "
              "Roost installs without them and runs on its PyTorch path (slower on the CPU).", file=sys.stderr)


setup(
    ext_modules=[Extension(
        "roost.engine._native", sources=["engine/csrc/native.cpp"], language="c++",
        extra_compile_args=FLAGS, define_macros=[("Py_LIMITED_API", "0x030A0000")], py_limited_api=True,
        optional=True)],
    cmdclass={"build_ext": OptionalKernels},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
