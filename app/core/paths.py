"""Where Roost keeps its files: the models folder, settings and caches.

The models folder is per user and writable by default (not beside the app: macOS app bundles and
Windows Program Files are read-only). A portable pack (a frozen Roost with a writable `models/`
folder beside it) keeps its models there. The user may choose another folder; that choice is stored
in the settings file (roost.core.settings). `ROOST_MODELS_DIR` and `ROOST_HOME` override both
(tests, power users).
"""

from __future__ import annotations

import os
import sys
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.abc import Traversable

APP = "Roost"


def asset(name: str) -> Traversable:
    """One of Roost's bundled data files (package `roost.assets`), wherever Roost is installed: an
    editable checkout, a wheel in site-packages or the frozen bundle. Use `.read_text()`/`.is_file()`,
    or `importlib.resources.as_file` where a real path is needed."""
    return resources.files("roost.assets").joinpath(name)


def read_asset_text(name: str) -> str:
    """The text of a bundled data file; a missing one is an incomplete installation, said plainly."""
    try:
        return asset(name).read_text(encoding="utf-8")
    except (OSError, ModuleNotFoundError) as e:
        from roost.engine.errors import RoostError

        raise RoostError(f"This Roost installation is incomplete: its data file {name} is missing ({e}). "
                         f"Reinstall Roost.\n此 Roost 安装不完整：缺少数据文件 {name}。请重新安装 Roost。") from None


def data_dir() -> Path:
    """The per-user folder for settings, caches and (by default) models."""
    if os.environ.get("ROOST_HOME"):
        return Path(os.environ["ROOST_HOME"])
    home = Path.home()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
        return base / APP
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / APP
    base = Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share")
    return base / APP.lower()


def cache_dir() -> Path:
    """The per-user cache folder: what is in it can be made again (the system may clean it)."""
    if os.environ.get("ROOST_HOME"):
        return Path(os.environ["ROOST_HOME"]) / "cache"
    home = Path.home()
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local") / APP / "Cache"
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / APP
    return Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache") / APP.lower()


def weights_cache_dir() -> Path:
    """Converted int8/int4 weights (roost.engine.weight_cache): never in the models folder, where
    they would look like models."""
    return cache_dir() / "weights"


def settings_file() -> Path:
    return data_dir() / "settings.json"


def portable_models_dir() -> Path | None:
    """`models/` beside a frozen Roost, when it exists or can be made and is writable."""
    if not getattr(sys, "frozen", False):
        return None
    exe_dir = Path(sys.executable).resolve().parent
    if exe_dir.parts[-2:] == ("Contents", "MacOS"):  # inside Roost.app: never write into the app
        return None
    folder = exe_dir / "models"
    try:
        folder.mkdir(exist_ok=True)
        probe = folder / ".roost-write-test"
        probe.write_bytes(b"")
        probe.unlink()
        return folder
    except OSError:
        return None


MODEL_SUFFIXES = (".pth", ".safetensors")  # the files the models folder holds models in


def models_dir(create: bool = True) -> Path:
    """The models folder in force: $ROOST_MODELS_DIR, the user's choice (Settings), a portable pack's,
    or the per-user default."""
    from roost.core.settings import load_settings

    folder = load_settings().models_folder()
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return folder
