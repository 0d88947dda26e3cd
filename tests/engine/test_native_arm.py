"""The compiled kernels' Arm paths (NEON, and NEON with dot products as on Apple Silicon), which no
machine of ours runs natively: built with a cross compiler and run under qemu's user-mode emulation
against the portable C++ kernels. Skips where the cross compiler or qemu is not installed (.ci/run
installs both from Debian's packages where it can)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

SOURCES = [ROOT / "tests" / "engine" / "native" / "check.cpp", ROOT / "engine" / "csrc" / "native.cpp"]
CXX, QEMU, SYSROOT = shutil.which("aarch64-linux-gnu-g++"), shutil.which("qemu-aarch64"), Path("/usr/aarch64-linux-gnu")


@pytest.mark.skipif(not (CXX and QEMU and SYSROOT.is_dir()),
                    reason="needs Debian's g++-aarch64-linux-gnu and qemu-user to build and run an Arm binary")
@pytest.mark.parametrize("arch, isa", [("armv8-a", 3), ("armv8.2-a+dotprod", 4)], ids=["neon", "neon-dotprod"])
def test_the_arm_kernels_agree_with_the_portable_ones(tmp_path, arch, isa):
    exe = tmp_path / "check"
    built = subprocess.run([CXX, "-O2", "-std=c++17", "-DRN_NO_PYTHON", f"-march={arch}", "-o", str(exe),
                            *map(str, SOURCES), "-lpthread"], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    r = subprocess.run([QEMU, "-L", str(SYSROOT), str(exe)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"isa {isa}" in r.stdout and r.stdout.count("max diff") == 2, r.stdout
