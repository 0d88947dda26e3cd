"""The catalog of official checkpoints (assets/catalog.json) and the first-run recommendation.

Refreshing the catalog from the Hub's API (files removed upstream) is not written yet: the
bundled list is what is offered.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

from app.core.advisor import RUNS_WELL, Advice, ModelShape, choose_strategy
from app.core.hardware import Machine

CATALOG = Path(__file__).resolve().parents[2] / "assets" / "catalog.json"
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

    @property
    def shape(self) -> ModelShape:
        return ModelShape(self.version, self.n_layer, self.n_embd, self.vocab_size)

    @property
    def billions(self) -> float:
        try:
            return float(self.params.rstrip("B"))
        except ValueError:
            return 0.0


def load_catalog(path: str | os.PathLike | None = None) -> list[CatalogModel]:
    data = json.loads(Path(path or CATALOG).read_text(encoding="utf-8"))
    names = {f.name for f in fields(CatalogModel)}
    out = []
    for m in data["models"]:
        m = {k: v for k, v in m.items() if k in names}
        m["companions"] = tuple(tuple(sorted(c.items())) for c in m.get("companions", ()))
        out.append(CatalogModel(**m))
    return out


def recommend(models: list[CatalogModel], machine: Machine) -> tuple[CatalogModel, Advice]:
    """The model for a first-time user: the newest RWKV-7 G1 release of the largest size that runs
    well at a comfortable speed on this machine, else the smallest G1."""
    g1 = [m for m in models if m.family == "RWKV-7 G1"] or models
    newest: dict[str, CatalogModel] = {}
    for m in g1:
        if m.params not in newest or m.date > newest[m.params].date:
            newest[m.params] = m
    candidates = sorted(newest.values(), key=lambda m: m.billions, reverse=True)
    for m in candidates:
        advice = choose_strategy(m.shape, machine)
        if advice.label == RUNS_WELL and advice.tokens_per_second >= MIN_TPS:
            return m, advice
    smallest = candidates[-1]
    return smallest, choose_strategy(smallest.shape, machine)
