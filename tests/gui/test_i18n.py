"""Every string the app shows through tr() has its Simplified Chinese text."""

from __future__ import annotations

import ast

import pytest

from roost.gui.i18n import TEXT
from tests.conftest import ROOT


def tr_keys() -> dict[str, str]:
    """{key: where} for every tr("literal", ...) in the app's source."""
    keys = {}
    for path in sorted((ROOT / "app").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "tr"
                    and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                keys.setdefault(node.args[0].value, f"{path.relative_to(ROOT)}:{node.lineno}")
    return keys


def test_every_tr_string_has_a_chinese_text():
    keys = tr_keys()
    assert len(keys) > 50  # the scan finds the app's strings
    missing = {k: where for k, where in keys.items() if k not in TEXT}
    assert not missing, "no Chinese text for:\n" + "\n".join(f"  {w}: {k!r}" for k, w in missing.items())


def test_chinese_texts_keep_their_placeholders():
    import re

    for key, zh in TEXT.items():
        assert set(re.findall(r"\{(\w+)", key)) == set(re.findall(r"\{(\w+)", zh)), key


def _cjk(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def test_completion_presets_and_result_line_in_each_language(qtbot, window, monkeypatch):
    from roost.core.runtime import Reply
    from roost.gui import completion_page, i18n

    for lang in ("en", "zh"):
        monkeypatch.setenv("LANG", "zh_CN.UTF-8" if lang == "zh" else "en_US.UTF-8")
        win = window()
        assert i18n.language() == lang
        page = win.completion
        names = [page.preset.itemText(i) for i in range(page.preset.count())]
        assert len(names) == len(completion_page.PRESETS)
        assert all(_cjk(n) for n in names) if lang == "zh" else not any(_cjk(n) for n in names), names
        page.rid = 7
        page.on_done(7, Reply("x", "", "length", 300, 0, 0, 135.0))
        line = page.info.text()
        assert ("已达到长度上限" in line and "length" not in line) if lang == "zh" else \
            line == "300 tokens · 135.0 tokens/s · reached the token limit", line
        win.close()
    for word in completion_page.FINISHED.values():
        assert word in TEXT


def test_pages_start_from_the_engines_sampling_defaults(qtbot, window):
    from roost.engine.sampling import CHAT_SAMPLING, COMPLETION_SAMPLING, KNOBS

    win = window()
    assert {k: win.completion.sampling.values()[k] for k in KNOBS} == pytest.approx(COMPLETION_SAMPLING)
    assert {k: win.chat.sampling.values()[k] for k in KNOBS} == pytest.approx(CHAT_SAMPLING)
