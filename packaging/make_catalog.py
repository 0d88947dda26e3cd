"""Build assets/catalog.json from a model-facts file (files, sizes, sha256 of the official checkpoints).

    python packaging/make_catalog.py MODEL_FACTS.json assets/catalog.json

A maintainer's tool, run by hand when the facts change; nothing in the build or the tests runs it,
and the catalog it writes is committed.

Adds what the app shows: a display name, the parameter count, and a one-line description in
English and Chinese. Run it again when the facts change.
"""

from __future__ import annotations

import json
import re
import sys

FAMILY = {
    "Raven": ("RWKV-4 Raven", "English chat model (2023), GPT-NeoX tokenizer",
              "RWKV-4 Raven 英文对话模型（2023），使用 GPT-NeoX 分词器"),
    "Eagle": ("RWKV-5 Eagle", "multilingual World model (2024)", "RWKV-5 Eagle 多语言 World 模型（2024）"),
    "Finch": ("RWKV-6 Finch", "multilingual World model (2024)", "RWKV-6 Finch 多语言 World 模型（2024）"),
    "Goose": ("RWKV-7 Goose", "multilingual World model (2025)", "RWKV-7 Goose 多语言 World 模型（2025）"),
}


def params_of(file: str) -> str:
    m = re.search(r"[-_](\d+(?:\.\d+)?)[bB](\d+)?[-_]", file)
    if not m:
        return "?"
    return f"{m.group(1)}.{m.group(2)}B" if m.group(2) else f"{m.group(1).upper()}B"


def entry(m: dict) -> dict:
    fam, en, zh = FAMILY[m["family"]]
    size = params_of(m["file"])
    name = m["file"].rsplit(".", 1)[0]
    if m["family"] == "Goose" and re.match(r"rwkv7-g", m["file"]):
        fam = "RWKV-7 G1"
        en, zh = "reasoning chat model: thinks before it answers (2025-26)", "会先思考再回答的推理对话模型（2025-26）"
        if "g0" in m["file"]:
            fam, en, zh = "RWKV-7 G0", "pretrained base model with chat and reasoning data", "含对话与推理数据的预训练基础模型"
    ctx_tokens = int(m["ctx"][:-1]) * 1024 if isinstance(m["ctx"], str) else int(m["ctx"])  # "16k"
    ctx = f"{ctx_tokens // 1024}k"
    return {
        "id": name, "display": f"{fam} {size}", "family": fam, "version": m["version"],
        "params": size, "file": m["file"], "repo": m["repo"], "host": m["host"],
        "size_bytes": m["size_bytes"], "sha256": m["sha256"], "date": m["date"], "ctx": ctx_tokens,
        "n_layer": m["n_layer"], "n_embd": m["n_embd"],
        "vocab_size": 50277 if m["family"] == "Raven" else 65536,
        "companions": ([{"repo": "EleutherAI/gpt-neox-20b", "file": "tokenizer.json",
                         "save_as": "20B_tokenizer.json"}] if m["family"] == "Raven" else []),
        "description": f"{en}; {size} parameters, {ctx} context.",
        "description_zh": f"{zh}；{size} 参数，{ctx} 上下文。",
    }


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    facts = json.load(open(src, encoding="utf-8"))
    out = {"about": "Official RWKV checkpoints offered by Roost. Built by packaging/make_catalog.py.",
           "models": [entry(m) for m in facts["models"]]}
    with open(dst, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
