"""The models folder: what is installed, downloads of catalog models with their companion files,
import of a file the user already has, delete, and unfinished downloads to resume.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from roost.core import download
from roost.core.catalog import CatalogModel
from roost.core.paths import MODEL_SUFFIXES
from roost.core.download import (
    ChecksumError,
    Control,
    DownloadError,
    Progress,
    human_size,
)
from roost.core.sources import HUB, candidates



@dataclass(frozen=True)
class Target:
    """One thing to download: a catalog model, or a REPO_ID/FILE the user named."""

    repo: str
    file: str
    host: str = HUB
    sha256: str | None = None
    size: int | None = None
    companions: tuple = ()  # ((repo, file, save_as), ...)
    model: CatalogModel | None = None

    @property
    def name(self) -> str:
        return Path(self.file).name


def target_for(spec: str, catalog: list[CatalogModel]) -> Target:
    """A catalog id or file name, or `owner/repo/path/to/file` for any file on the Hub."""
    for m in catalog:
        if spec in (m.id, m.file):
            return from_catalog(m)
    parts = spec.strip("/").split("/")
    if len(parts) >= 3:
        return Target("/".join(parts[:2]), "/".join(parts[2:]))
    raise DownloadError(
        f"'{spec}' is neither a model in the catalog (see 'roost models --all') nor REPO_ID/FILE "
        f"such as BlinkDL/rwkv-7-world/RWKV-x070-World-0.1B-v2.8-20241210-ctx4096.pth.\n"
        f"“{spec}” 既不是模型列表中的名称，也不是“仓库/文件”格式。")


def from_catalog(m: CatalogModel) -> Target:
    comps = tuple((dict(c)["repo"], dict(c)["file"], dict(c).get("save_as") or Path(dict(c)["file"]).name)
                  for c in m.companions)
    return Target(m.repo, m.file, m.host, m.sha256, m.size_bytes, comps, m)


def download_target(target: Target, models_dir: str | os.PathLike, *, source: str = HUB,
                    endpoints: dict[str, str] | None = None, token: str | None = None,
                    progress: Callable[[Progress], None] | None = None,
                    control: Control | None = None, **kw) -> Path:
    """Companion files first (small), then the model; each verified. Returns the model's path."""
    folder = Path(models_dir)
    for repo, file, save_as in target.companions:
        download.download_file(candidates(repo, file, HUB, source, endpoints), folder / save_as,
                               token=token, progress=progress, control=control, **kw)
    cands = candidates(target.repo, target.file, target.host, source, endpoints)
    return download.download_file(cands, folder / target.name, sha256=target.sha256, size=target.size,
                                  token=token, progress=progress, control=control, **kw)


@dataclass
class Installed:
    path: Path
    size: int
    model: CatalogModel | None  # None for a file that is not in the catalog
    missing_companions: tuple[str, ...] = ()
    persona: bool = False  # a state-tuning file (a persona of the models it fits), not a model


def installed(models_dir: str | os.PathLike, catalog: list[CatalogModel]) -> list[Installed]:
    """The model files in the folder (state-tuning files, which are not models, left out)."""
    folder = Path(models_dir)
    by_file = {m.file: m for m in catalog}
    out = []
    for p in sorted(folder.iterdir()) if folder.is_dir() else ():
        if p.suffix not in MODEL_SUFFIXES or not p.is_file() or is_state_file(p):
            continue
        m = by_file.get(p.name)
        missing = ()
        if m is not None:
            missing = tuple(t[2] for t in from_catalog(m).companions if not (folder / t[2]).is_file())
        out.append(Installed(p, p.stat().st_size, m, missing))
    return out


@dataclass
class Pending:
    name: str
    have: int
    total: int | None


def pending(models_dir: str | os.PathLike) -> list[Pending]:
    """Unfinished downloads (a `.part` beside its sidecar) that a new download call resumes."""
    out = []
    for side in sorted(Path(models_dir).glob("*.part.json")):
        part = side.with_suffix("")
        try:
            total = json.loads(side.read_text(encoding="utf-8")).get("size")
        except (OSError, ValueError):
            total = None
        out.append(Pending(part.name[: -len(".part")], part.stat().st_size if part.exists() else 0, total))
    return out


def delete(path: str | os.PathLike, models_dir: str | os.PathLike, catalog: list[CatalogModel]) -> list[Path]:
    """Delete a model (or an unfinished download of it) and companion files no other model needs."""
    folder = Path(models_dir)
    path = folder / Path(path).name
    removed = []
    for p in (path, path.with_name(path.name + ".part"), path.with_name(path.name + ".part.json"),
              own_tokenizer_file(path)):
        if p.exists():
            p.unlink()
            removed.append(p)
    still = installed(folder, catalog)
    needed = {t[2] for i in still if i.model for t in from_catalog(i.model).companions}
    by_file = {m.file: m for m in catalog}
    if path.name in by_file:
        for _repo, _file, save_as in from_catalog(by_file[path.name]).companions:
            comp = folder / save_as
            if save_as not in needed and comp.exists():
                comp.unlink()
                removed.append(comp)
    return removed


def import_file(src: str | os.PathLike, models_dir: str | os.PathLike, catalog: list[CatalogModel],
                progress: Callable[[Progress], None] | None = None) -> Installed:
    """Copy a checkpoint the user already has into the models folder. It must open as an RWKV model
    (nothing in it is executed); a file named like a catalog model must have that model's sha256."""
    from roost.engine.checkpoint import open_checkpoint

    src = Path(src)
    folder = Path(models_dir)
    folder.mkdir(parents=True, exist_ok=True)
    if not src.is_file():
        raise DownloadError(f"{src} does not exist or is not a file.\n{src} 不存在或不是文件。")
    from roost.engine.tuned_state import is_tuned_state_file, load_tuned_state

    if is_tuned_state_file(src):  # a persona: checked whole (a clear error when damaged), then copied
        load_tuned_state(src)
        dest = folder / src.name
        if dest.exists() and dest.resolve() != src.resolve():
            raise DownloadError(f"{dest} already exists; delete it first or rename the file you import.\n"
                                f"{dest} 已存在；请先删除或重命名要导入的文件。")
        if not dest.exists():
            part = dest.with_name(dest.name + ".import")
            try:
                shutil.copyfile(src, part)
                os.replace(part, dest)
            finally:
                part.unlink(missing_ok=True)
        return Installed(dest, dest.stat().st_size, None, persona=True)
    tensors, cfg = open_checkpoint(src)  # raises a CheckpointError that says what is wrong
    tensors.close()
    tokenizer = brought_tokenizer(src, cfg.vocab_size)
    model = next((m for m in catalog if m.file == src.name), None)
    dest = folder / src.name
    size = src.stat().st_size
    if dest.exists() and dest.resolve() == src.resolve():
        return Installed(dest, size, model)
    if dest.exists():
        raise DownloadError(f"{dest} already exists; delete it first or rename the file you import.\n"
                            f"{dest} 已存在；请先删除或重命名要导入的文件。")
    download.check_disk(folder, size)
    part = dest.with_name(dest.name + ".import")
    h = hashlib.sha256()
    meter = download.Meter(dest.name, size, progress)
    try:
        with open(src, "rb") as fi, open(part, "wb") as fo:
            done = 0
            while chunk := fi.read(8 << 20):
                fo.write(chunk)
                h.update(chunk)
                done += len(chunk)
                meter.report(done, "copying")
        if model is not None and h.hexdigest() != model.sha256:
            raise ChecksumError(
                f"{src.name} has the name of an official model but not its content (sha256 differs): "
                "the copy is damaged or incomplete. Download it again instead.\n"
                f"{src.name} 与官方模型同名但内容不同（sha256 不符），文件可能已损坏或不完整，请重新下载。")
        if tokenizer is not None:  # the model's own tokenizer, under its name: the folder is shared
            shutil.copyfile(tokenizer, own_tokenizer_file(dest))
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
    meter.report(size, "done", force=True)
    return Installed(dest, size, model)


def own_tokenizer_file(model: Path) -> Path:
    """``NAME.tokenizer.json`` beside ``NAME.pth``: the tokenizer of a model whose vocabulary Roost
    does not carry (neither World nor GPT-NeoX; see roost.engine.tokenizer.tokenizer_files)."""
    return model.with_name(model.stem + ".tokenizer.json")


def brought_tokenizer(src: Path, vocab_size: int) -> Path | None:
    """The tokenizer.json beside a model file being imported, where its vocabulary needs one."""
    from roost.engine.tokenizer import NEOX_VOCABS, WORLD_VOCABS, tokenizer_files

    if vocab_size in WORLD_VOCABS or vocab_size in NEOX_VOCABS:
        return None
    return next((p for p in tokenizer_files(src) if p.is_file()), None)


def describe_pending(p: Pending) -> str:
    total = human_size(p.total) if p.total else "?"
    return f"{p.name}: {human_size(p.have)} of {total}"


def free_space(models_dir: str | os.PathLike) -> int:
    return shutil.disk_usage(models_dir).free


# --- what the Models page and `roost models` list ---------------------------------------------------
@dataclass
class ModelRow:
    model: CatalogModel | None  # None for a local file outside the catalog
    path: Path  # where the file is (or would be) in the models folder
    advice: object | None = None  # the advisor's Advice on this machine (catalog models)

    @property
    def name(self) -> str:
        return self.model.display if self.model else self.path.name

    @property
    def file(self) -> str:
        return self.model.file if self.model else self.path.name

    @property
    def downloaded(self) -> bool:
        return self.path.is_file()

    @functools.cached_property
    def problem(self) -> str | None:
        """Why the file here cannot be used, with what to do (English, then Chinese); None when
        it looks whole or is not here (see file_problem). Found once per row: the list asks at
        every paint, and a folder change makes new rows."""
        return file_problem(self.path, self.model) if self.downloaded else None


def file_problem(path: Path, model: CatalogModel | None = None) -> str | None:
    """Why a model file in the folder cannot be used, with what to do (English, then Chinese), or
    None when it looks whole: a catalog model's file against the catalog's size (a download cut
    short or a copy not finished), any other file by opening its index (remembered while it
    keeps its size and time). Its data are not read: damage inside a whole-sized file shows at load."""
    from roost.core.download import human_size

    try:
        size = path.stat().st_size
    except OSError:
        return None
    if model is not None and model.size_bytes:
        if size == model.size_bytes:
            return None
        return (f"This file is damaged or incomplete ({human_size(size)} of {human_size(model.size_bytes)}). "
                f"Delete it and download it again.\n"
                f"此文件已损坏或不完整（{human_size(size)} / {human_size(model.size_bytes)}）。请删除后重新下载。")
    if _model_config(path) is not None:
        return None
    return ("This file does not open as an RWKV model: it is damaged, incomplete (still being copied?) or "
            "another kind of file. Copy it again, or delete it.\n"
            "此文件无法作为 RWKV 模型打开：可能已损坏、不完整（仍在复制？）或不是模型文件。请重新复制或删除。")


def model_rows(models_dir: str | os.PathLike, catalog: list[CatalogModel], machine=None, *,
               every_release: bool = False, advice_cache: dict | None = None) -> tuple[list[ModelRow], dict]:
    """The rows of the models list, and the partial downloads by file name: the catalog (the newest
    release of each size unless `every_release`, plus any release that is here or partly here), then
    the model files in the folder that the catalog does not know; with `machine`, each catalog row
    carries the advisor's choice (kept in `advice_cache` by model id, for the next call)."""
    from roost.core.advisor import choose_strategy
    from roost.core.catalog import newest_releases

    folder = Path(models_dir)
    partial = {p.name: p for p in pending(folder)}
    files = sorted(folder.iterdir()) if folder.is_dir() else []
    models = catalog
    if not every_release:
        here = {p.name for p in files} | set(partial)
        newest = {m.id for m in newest_releases(catalog)}
        models = [m for m in catalog if m.id in newest or m.file in here]
    rows = [ModelRow(m, folder / m.file) for m in models]
    known = {m.file for m in catalog}
    rows += [ModelRow(None, p) for p in files
             if p.suffix in MODEL_SUFFIXES and p.name not in known and not is_state_file(p)]
    if machine is not None:
        cache = advice_cache if advice_cache is not None else {}
        for r in rows:
            if r.model is not None:
                if r.model.id not in cache:
                    cache[r.model.id] = choose_strategy(r.model.shape, machine)
                r.advice = cache[r.model.id]
    return rows, partial


# --- state-tuning files (personas) --------------------------------------------------------------------
# A state file (only the starting state of each layer, blocks.N.att.time_state) has a model's suffix
# but is no model: it is told apart by its keys and listed as a persona of the models it fits.
_facts: dict[tuple, tuple] = {}  # (what, path, size, mtime) -> ("ok", value) | ("error", exception)


def _cached(what: str, path: Path, compute: Callable[[Path], object]):
    """``compute(path)``, remembered while the file keeps its size and modification time: the
    folder is listed again at each refresh, and models are only opened once."""
    try:
        st = path.stat()
    except OSError:
        return compute(path)
    key = (what, str(path), st.st_size, st.st_mtime_ns)
    if key not in _facts:
        if len(_facts) > 1024:
            _facts.clear()
        try:
            _facts[key] = ("ok", compute(path))
        except Exception as e:  # noqa: BLE001 (remembered and raised again as it is)
            _facts[key] = ("error", e)
    kind, value = _facts[key]
    if kind == "error":
        raise value.with_traceback(None)
    return value


def is_state_file(path: str | os.PathLike) -> bool:
    """Whether a file in the models folder is a state-tuning file rather than a model, by its keys
    (read without its data; files larger than any state file are not opened)."""
    from roost.engine.tuned_state import is_tuned_state_file

    return bool(_cached("is_state", Path(path), is_tuned_state_file))


def _model_config(path: Path):
    """The shape of a local model file (its keys and shapes, no data), or None where it does not open."""
    from roost.engine.checkpoint import open_checkpoint
    from roost.engine.errors import RoostError

    def read(p: Path):
        tensors, cfg = open_checkpoint(p)
        tensors.close()
        return cfg

    try:
        return _cached("config", path, read)
    except (RoostError, OSError):
        return None


@dataclass(frozen=True)
class Persona:
    """A state-tuning file in the models folder and the local models it can start."""

    path: Path
    name: str  # the file's name without its suffix
    n_layer: int  # of the model it was made for (0 where the file is damaged)
    n_embd: int
    head_size: int
    version: int | None  # the RWKV version its name says; None: 5, 6 or 7 (the tensors cannot tell)
    fits: tuple[str, ...] = ()  # file names of the models in the folder it fits
    problem: str | None = None  # why it cannot be used (a damaged file), in a sentence


def personas(models_dir: str | os.PathLike, catalog: list[CatalogModel] | None = None) -> list[Persona]:
    """The state-tuning files in the models folder, each with the local models it fits (same
    layers, heads and head size, an RWKV-5/6/7 model, of the version its name says if it does)."""
    from roost.engine.errors import RoostError
    from roost.engine.tuned_state import describe_tuned_state, version_from_name

    folder = Path(models_dir)
    files = sorted(folder.iterdir()) if folder.is_dir() else []
    states = [p for p in files if p.suffix in MODEL_SUFFIXES and p.is_file() and is_state_file(p)]
    if not states:
        return []
    models = [(i.path.name, cfg) for i in installed(folder, catalog or [])
              if (cfg := _model_config(i.path)) is not None]
    out = []
    for p in states:
        try:
            info = _cached("describe", p, describe_tuned_state)
        except RoostError as e:
            out.append(Persona(p, p.stem, 0, 0, 0, version_from_name(p.name), problem=str(e)))
            continue
        fits = tuple(name for name, cfg in models if info.mismatch(cfg) is None)
        out.append(Persona(p, info.name, info.n_layer, info.n_embd, info.head_size, info.version, fits))
    return out
