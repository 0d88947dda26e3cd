"""Roost installs as one import package, `roost`, whose data files are found wherever it is installed."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

from tests.conftest import ROOT


def _setuptools_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_in_the_wheel():
    """A new folder with an __init__.py under app/ or engine/ must be listed, or the wheel lacks it."""
    cfg = _setuptools_config()
    mapping = cfg["package-dir"]
    assert set(mapping) == {"roost", "roost.engine", "roost.assets"}
    found = set()
    for name, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            dotted = ".".join((name, *rel.parts))
            if not any(dotted == other or dotted.startswith(other + ".")
                       for other in mapping if other != name and len(other) > len(name)):
                found.add(dotted)
    assert found == set(cfg["packages"])


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, str]:
    """The wheel, built from a copy of the sources (the build leaves build/ and *.egg-info behind),
    and what the build printed."""
    return _build_wheel(tmp_path_factory)


@pytest.fixture(scope="module")
def wheel(built) -> Path:
    return built[0]


def _build_wheel(tmp_path_factory, env: dict | None = None) -> tuple[Path, str]:
    import shutil

    src = tmp_path_factory.mktemp("src")
    for name in ("app", "engine", "assets"):  # (not an editable install's kernels built in place)
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd"))
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE", "MANIFEST.in"):
        shutil.copy(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "--disable-pip-version-check", "-v", "-w", str(out), str(src)],
                       capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (path,) = out.glob("roost-*.whl")
    return path, r.stdout + r.stderr


def test_the_wheel_installs_one_top_level_name_with_its_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"roost"}
    assert "roost/assets/catalog.json" in names and "roost/engine/arch/v7.py" in names
    assert not [n for n in names if "screenshots" in n]  # the README's screenshots stay out
    assert "roost/assets/icons/roost.png" in names  # the window icon goes in
    dist = next(t for t in tops if t.endswith(".dist-info"))
    entry_points = zipfile.ZipFile(wheel).read(f"{dist}/entry_points.txt").decode()
    assert "roost = roost.cli:main" in entry_points


def _compiler() -> bool:
    import shutil

    return bool(shutil.which("c++") or shutil.which("g++") or shutil.which("clang++"))


@pytest.mark.skipif(not _compiler(), reason="no C++ compiler here to build the kernels with")
def test_the_wheel_carries_the_compiled_kernels_for_its_platform(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert [n for n in names if n.startswith("roost/engine/_native.") and n.endswith((".so", ".pyd"))]
    assert "-abi3-" in wheel.name and not wheel.name.endswith("-none-any.whl")  # one wheel per platform


@pytest.mark.skipif(sys.platform == "win32", reason="the compiler is replaced through CC/CXX here")
def test_without_a_compiler_the_wheel_builds_without_the_kernels_and_says_so_in_one_line(tmp_path_factory):
    env = {**os.environ, "CC": "/nonexistent/cc", "CXX": "/nonexistent/c++"}
    path, printed = _build_wheel(tmp_path_factory, env)
    assert not [n for n in zipfile.ZipFile(path).namelist() if "_native" in n]
    said = [line for line in printed.splitlines() if "the compiled CPU kernels were not built" in line]
    assert len(said) == 1 and "runs on its PyTorch path" in said[0], printed[-2000:]


def test_an_installed_layout_finds_its_catalog_away_from_the_checkout(wheel, tmp_path):
    """The wheel's files unpacked as site-packages would hold them; run from outside the checkout."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site), "ROOST_HOME": str(tmp_path / "home")}
    code = ("import roost, roost.engine; from roost.core.catalog import load_catalog; "
            "print(roost.__file__); print(roost.engine.__file__); print(len(load_catalog()))")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    roost_file, engine_file, count = r.stdout.split()
    assert Path(roost_file).is_relative_to(site) and Path(engine_file).is_relative_to(site)
    assert int(count) > 10
    r = subprocess.run([sys.executable, "-m", "roost", "models"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "RWKV-7 G1" in r.stdout, r.stderr


def test_a_missing_data_file_is_said_plainly(monkeypatch):
    from roost.core import paths
    from roost.engine.errors import RoostError

    with pytest.raises(RoostError, match="installation is incomplete: its data file nothing.json is missing"):
        paths.read_asset_text("nothing.json")


def test_nothing_imports_the_folders_by_their_old_names():
    """app/ and engine/ are only folders: code that imports `app` or `engine` works in a checkout
    by accident (the current directory) and breaks installed."""
    import re

    pattern = re.compile(r"^\s*(from|import) (app|engine)\b|[\"']-m[\"'], [\"']app[\"']|-m app\b", re.M)
    found = []
    for folder in ("app", "engine", "tests", "benchmarks", "packaging", ".github"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".spec", ".sh", ".ps1", ".yml") and path.is_file() and path != Path(__file__):
                for m in pattern.finditer(path.read_text(encoding="utf-8")):
                    found.append(f"{path.relative_to(ROOT)}: {m.group(0).strip()}")
    assert not found, "\n".join(found)
