"""Download sources: the Hugging Face Hub, its mirror hf-mirror.com, and ModelScope.

A catalog file lives on one host (`host: hf` or `host: modelscope`). The user picks a preferred
source; a file is tried there first and always falls back to its own host. Hub and mirror speak the
Hub protocol (resolve URLs, `X-Linked-Etag` carries the sha256); ModelScope serves plain HTTP with
Range at `/models/{repo}/resolve/master/{file}`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import quote

HUB = "hf"
MIRROR = "mirror"
MODELSCOPE = "modelscope"
SOURCES = (HUB, MIRROR, MODELSCOPE)

DEFAULT_ENDPOINTS = {
    HUB: "https://huggingface.co",
    MIRROR: "https://hf-mirror.com",
    MODELSCOPE: "https://modelscope.cn",
}

SOURCE_NAMES = {
    HUB: ("Hugging Face", "Hugging Face"),
    MIRROR: ("hf-mirror.com (mirror, fast in mainland China)", "hf-mirror.com（镜像，中国大陆访问更快）"),
    MODELSCOPE: ("ModelScope", "ModelScope 魔搭社区"),
}


def endpoints(overrides: dict[str, str] | None = None) -> dict[str, str]:
    """The base URL of each source. `HF_ENDPOINT` replaces the Hub (as huggingface_hub does) and
    `ROOST_MODELSCOPE_ENDPOINT` replaces ModelScope; explicit overrides win over both."""
    out = dict(DEFAULT_ENDPOINTS)
    if os.environ.get("HF_ENDPOINT"):
        out[HUB] = os.environ["HF_ENDPOINT"]
    if os.environ.get("ROOST_MODELSCOPE_ENDPOINT"):
        out[MODELSCOPE] = os.environ["ROOST_MODELSCOPE_ENDPOINT"]
    out.update({k: v for k, v in (overrides or {}).items() if v})
    return {k: v.rstrip("/") for k, v in out.items()}


def suggested_source(lang: str | None = None, tz: str | None = None) -> str:
    """hf-mirror.com for users who appear to be in mainland China (the Hub is often unreachable
    there), else the Hub. A guess from the locale and time zone; Settings overrides it."""
    import locale
    import time

    if lang is None:
        try:
            lang = os.environ.get("LC_ALL") or os.environ.get("LANG") or (locale.getlocale()[0] or "")
        except ValueError:
            lang = ""
    if tz is None:
        tz = os.environ.get("TZ") or " ".join(time.tzname)
    lang = lang.replace("-", "_").lower()
    china_tz = any(z in tz for z in ("Asia/Shanghai", "Asia/Chongqing", "Asia/Harbin", "Asia/Urumqi",
                                     "PRC", "China Standard Time", "CST-8"))
    if lang.startswith(("zh_cn", "zh_hans", "chinese (simplified)")) or (lang.startswith("zh") and china_tz):
        return MIRROR
    return MIRROR if china_tz else HUB


@dataclass(frozen=True)
class Candidate:
    source: str  # HUB, MIRROR or MODELSCOPE
    url: str
    hub_protocol: bool  # True: resolve through huggingface_hub's metadata call
    endpoint: str


def file_url(source: str, repo: str, filename: str, base: str) -> str:
    if source == MODELSCOPE:
        return f"{base}/models/{repo}/resolve/master/{quote(filename)}"
    from huggingface_hub import hf_hub_url

    return hf_hub_url(repo, filename, endpoint=base)


def candidates(repo: str, filename: str, host: str = HUB, preferred: str = HUB,
               overrides: dict[str, str] | None = None) -> list[Candidate]:
    """Where to fetch `repo/filename`, in the order to try: the preferred source, then the file's
    own host. A file on ModelScope is not on the Hub, so it is only fetched from ModelScope."""
    if preferred not in SOURCES:
        raise ValueError(f"unknown download source {preferred!r}; choose one of {', '.join(SOURCES)}")
    base = endpoints(overrides)
    order = [MODELSCOPE] if host == MODELSCOPE else [preferred, HUB]
    out: list[Candidate] = []
    for source in order:
        url = file_url(source, repo, filename, base[source])
        if all(c.url != url for c in out):
            out.append(Candidate(source, url, source != MODELSCOPE, base[source]))
    return out
