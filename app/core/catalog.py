"""The catalog of official checkpoints (assets/catalog.json) and the first-run recommendation.

Files can disappear upstream. `refresh_catalog` asks the Hub's API (paths-info, one request per
repo) whether each file still exists and what its size and sha256 are, and keeps the answer in the
user's data folder; `load_catalog` applies the last answer to the bundled list, so offline the
bundled list (with what was last learnt) is what is offered. ModelScope files are not on the Hub
and keep their bundled facts.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

from roost.core.advisor import RUNS_WELL, Advice, ModelShape, choose_strategy
from roost.core.hardware import Machine
from roost.core.paths import read_asset_text
from roost.engine.errors import RoostError

CATALOG = "catalog.json"  # in roost.assets
MIN_TPS = 8.0  # a first-time user should see text appear comfortably faster than reading speed


@dataclass(frozen=True)
class CatalogModel:
    id: str
    display: str
    family: str
    version: int
    params: str
    file: str
    repo: str
    host: str
    size_bytes: int
    sha256: str
    date: str
    ctx: int
    n_layer: int
    n_embd: int
    vocab_size: int
    companions: tuple
    description: str
    description_zh: str
    available: bool = True  # False: the last refresh found the file gone upstream

    @property
    def shape(self) -> ModelShape:
        return ModelShape(self.version, self.n_layer, self.n_embd, self.vocab_size)

    @property
    def billions(self) -> float:
        try:
            return float(self.params.rstrip("B"))
        except ValueError:
            return 0.0


def load_catalog(path: str | os.PathLike | None = None, refreshed: bool = True) -> list[CatalogModel]:
    """The bundled catalog, with the facts of the last refresh applied (unless `refreshed=False`)."""
    text = Path(path).read_text(encoding="utf-8") if path else read_asset_text(CATALOG)
    data = json.loads(text)
    names = {f.name for f in fields(CatalogModel)}
    out = []
    for m in data["models"]:
        m = {k: v for k, v in m.items() if k in names}
        m["companions"] = tuple(tuple(sorted(c.items())) for c in m.get("companions", ()))
        out.append(CatalogModel(**m))
    return _apply(out, _read_cache()) if refreshed else out


def cache_file() -> Path:
    from roost.core.paths import data_dir

    return data_dir() / "catalog-refresh.json"


def _read_cache() -> dict:
    try:
        return json.loads(cache_file().read_text(encoding="utf-8")).get("files", {})
    except (OSError, ValueError, AttributeError):
        return {}


def _apply(models: list[CatalogModel], facts: dict) -> list[CatalogModel]:
    out = []
    for m in models:
        f = facts.get(f"{m.repo}/{m.file}")
        if f is None:
            out.append(m)
        elif not f.get("exists", True):
            out.append(replace(m, available=False))
        else:
            out.append(replace(m, available=True, size_bytes=f.get("size") or m.size_bytes,
                               sha256=f.get("sha256") or m.sha256))
    return out


class CatalogRefreshError(RoostError):
    pass


def refresh_catalog(models: list[CatalogModel] | None = None, endpoint: str | None = None,
                    token: str | None = None) -> list[CatalogModel]:
    """Check every Hub-hosted catalog file against the Hub's API and remember the answer. Raises
    CatalogRefreshError when the Hub cannot be reached (the caller keeps the catalog it has)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    from roost.core.sources import HUB, endpoints

    models = models if models is not None else load_catalog(refreshed=False)
    api = HfApi(endpoint=endpoints({HUB: endpoint} if endpoint else None)[HUB], token=token or False)
    repos: dict[str, list[CatalogModel]] = {}
    for m in models:
        if m.host == HUB:
            repos.setdefault(m.repo, []).append(m)
    facts = {}
    for repo, ms in repos.items():
        try:
            infos = api.get_paths_info(repo, [m.file for m in ms], expand=False)
        except RepositoryNotFoundError:
            infos = []
        except Exception as e:  # the Hub is unreachable or answered nonsense: keep what we have
            raise CatalogRefreshError(
                f"Could not refresh the model list from {api.endpoint} ({type(e).__name__}); the bundled "
                f"list is shown.\n无法从 {api.endpoint} 刷新模型列表，显示的是内置列表。") from e
        found = {i.path: i for i in infos if hasattr(i, "size")}
        for m in ms:
            i = found.get(m.file)
            if i is None:
                facts[f"{repo}/{m.file}"] = {"exists": False}
            else:
                lfs = getattr(i, "lfs", None)
                facts[f"{repo}/{m.file}"] = {"exists": True, "size": i.size,
                                             "sha256": getattr(lfs, "sha256", None) if lfs else None}
    path = cache_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"checked": time.time(), "endpoint": api.endpoint, "files": facts}),
                    encoding="utf-8")
    return _apply(models, facts)


def newest_releases(models: list[CatalogModel]) -> list[CatalogModel]:
    """The newest release of each (family, size): what a catalog list shows by default."""
    newest: dict[tuple[str, str], CatalogModel] = {}
    for m in models:
        key = (m.family, m.params)
        if key not in newest or m.date > newest[key].date:
            newest[key] = m
    return list(newest.values())


def recommend(models: list[CatalogModel], machine: Machine) -> tuple[CatalogModel, Advice]:
    """The model for a first-time user: the newest RWKV-7 G1 release of the largest size that runs
    well at a comfortable speed on this machine, else the smallest G1."""
    models = [m for m in models if m.available] or models
    g1 = [m for m in models if m.family == "RWKV-7 G1"] or models
    candidates = sorted(newest_releases(g1), key=lambda m: m.billions, reverse=True)
    for m in candidates:
        advice = choose_strategy(m.shape, machine)
        if advice.label == RUNS_WELL and advice.tokens_per_second >= MIN_TPS:
            return m, advice
    smallest = candidates[-1]
    return smallest, choose_strategy(smallest.shape, machine)
