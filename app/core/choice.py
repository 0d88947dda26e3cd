"""Which model file and which strategy a command or the app uses: one rule for every entry point.

Strategy: the one asked for (``--strategy`` or a choice made in the app), else the model's saved
override (Models page), else the saved default (Settings), else ``auto``; ``auto`` is the advisor's
choice for this file on this machine, given with its reason. ``roost generate``, ``roost chat``,
``roost serve`` and the desktop app all decide through :func:`decide_strategy`.

Model: a path to a file, or the name of a catalog model (its id or file name) already in the
models folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from roost.core.settings import AUTO
from roost.engine.errors import RoostError

if TYPE_CHECKING:
    from roost.core.settings import Settings


@dataclass(frozen=True)
class StrategyChoice:
    strategy: str  # an engine strategy string, never "auto"
    reason: str  # "" unless the advisor chose
    reason_zh: str


def decide_strategy(path: str | os.PathLike, asked: str | None = None,
                    settings: Settings | None = None) -> StrategyChoice:
    """The strategy to load `path` with (Settings.strategy_for, on the saved settings unless given);
    "auto" asks the advisor."""
    if settings is None:
        from roost.core.settings import load_settings

        settings = load_settings()
    requested = settings.strategy_for(path, asked)
    if requested.lower() != AUTO:
        return StrategyChoice(requested, "", "")
    from roost.core.advisor import advise_file

    advice = advise_file(path)
    return StrategyChoice(advice.strategy, advice.reason, advice.reason_zh)


def resolve_model(spec: str, models_dir: str | os.PathLike | None = None) -> Path:
    """A model file from what a user typed: a path, or a catalog model downloaded to the models folder."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise RoostError(f"{path} is a folder; give the model's .pth or .safetensors file.\n"
                         f"{path} 是一个文件夹，请指定模型的 .pth 或 .safetensors 文件。")
    from roost.core import paths
    from roost.core.catalog import load_catalog

    folder = Path(models_dir) if models_dir is not None else paths.models_dir(create=False)
    model = next((m for m in load_catalog() if spec in (m.id, m.file)), None)
    if model is not None:
        path = folder / Path(model.file).name
        if path.is_file():
            return path
        raise RoostError(f"{model.display} ({model.id}) is not downloaded yet. Download it with: "
                         f"roost download {model.id}\n{model.display} 尚未下载。请先运行：roost download {model.id}")
    if Path(spec).name == spec and (folder / spec).is_file():  # a file name in the models folder
        return folder / spec
    raise RoostError(f"There is no file at {path.absolute()}. Check the path, or see 'roost models' for "
                     f"the models Roost can download.\n找不到文件 {path.absolute()}。请检查路径，或运行 "
                     f"'roost models' 查看可下载的模型。")


def model_and_strategy(spec: str, asked: str | None = None, say=None) -> tuple[Path, str]:
    """The commands' start: the model file for `spec` and its strategy (see the module's rule),
    each said through `say(text)` (the commands print to stderr): what loads, and why when chosen."""
    from roost.engine.strategy import check_devices, machine_devices, parse_strategy

    path = resolve_model(spec)
    choice = decide_strategy(path, asked)
    # a strategy this program cannot run is refused before anything says it is loading
    check_devices(parse_strategy(choice.strategy), **machine_devices())
    if say is not None:
        say(f"Loading {path.name} ({choice.strategy}) ...")
        if choice.reason:
            say(f"Strategy chosen automatically: {choice.reason}\n自动选择的运行方式：{choice.reason_zh}")
    return path, choice.strategy
