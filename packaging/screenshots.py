"""Render the app's pages offscreen, in light and dark, English and Chinese, as PNG files.

    QT_QPA_PLATFORM=offscreen python packaging/screenshots.py OUT_DIR [--all]

Without --all only the README's screenshots are written. The chat shows a sample conversation
written into a throwaway data folder (no model is loaded: the status bar says so); the Models page
shows the real catalog with this machine's fit labels. Chinese needs a CJK font (Debian:
fonts-noto-cjk), or it renders as boxes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

SAMPLE = {
    "en": ("Planning a weekend in Hangzhou", [
        ("user", "I have one weekend in Hangzhou. What should I see?"),
        ("assistant", "A relaxed plan for two days:\n\n**Saturday**\n\n- Walk the *Su Causeway* at West Lake early, "
                      "before the crowds\n- Lingyin Temple and the Feilai Feng carvings\n- Evening: Hefang Street\n\n"
                      "**Sunday**\n\n- Longjing village for tea in the hills\n- A boat to the Three Pools Mirroring "
                      "the Moon\n\nWould you like restaurant ideas too?"),
        ("user", "Yes, somewhere for Hangzhou food."),
    ], "Hangzhou cuisine is mild and fresh. Try **West Lake vinegar fish** and **Dongpo pork** at an old "
       "restaurant near the lake"),
    "zh": ("杭州周末行程", [
        ("user", "我在杭州只有一个周末，应该去哪里看看？"),
        ("assistant", "两天的轻松行程：\n\n**周六**\n\n- 清早去西湖走*苏堤*，避开人流\n- 灵隐寺和飞来峰石刻\n"
                      "- 晚上逛河坊街\n\n**周日**\n\n- 去龙井村，在山间喝茶\n- 坐船游三潭印月\n\n需要推荐餐馆吗？"),
        ("user", "好的，想吃地道的杭帮菜。"),
    ], "杭帮菜口味清淡鲜美。推荐在湖边的老字号尝尝**西湖醋鱼**和**东坡肉**"),
}
OTHER_CHATS = {  # more chats in the list: title, days since last changed, pinned
    "en": [("Translate my cover letter", 0.1, True), ("Ideas for a birthday dinner", 1.2, False),
           ("Explain RWKV's time mixing", 3, False), ("Python: read a CSV file", 12, False),
           ("A short poem about rain", 40, False)],
    "zh": [("翻译我的求职信", 0.1, True), ("生日晚餐的点子", 1.2, False), ("解释 RWKV 的时间混合", 3, False),
           ("Python：读取 CSV 文件", 12, False), ("写一首关于雨的小诗", 40, False)],
}
README_SHOTS = {("chat", "light", "en"), ("models", "light", "en"), ("chat", "dark", "zh"), ("welcome", "light", "en")}


def pump(app, seconds: float) -> None:
    end = time.time() + seconds
    while time.time() < end:
        app.processEvents()
        time.sleep(0.02)


def render(out: Path, theme: str, lang: str, wanted) -> list[Path]:
    from PySide6.QtWidgets import QApplication

    from roost.core import paths
    from roost.core.catalog import load_catalog, recommend
    from roost.core.hardware import probe
    from roost.core.settings import SettingsStore
    from roost.gui.app import create_window

    home = Path(tempfile.mkdtemp(prefix="roost-shots-"))
    os.environ["ROOST_HOME"] = str(home)
    SettingsStore().update(language=lang, theme=theme)
    win = create_window(start_engine=False)
    win.resize(1280, 800)  # every page is checked at this size (and the chat and models pages smaller and larger)
    app = QApplication.instance()
    title, turns, partial = SAMPLE[lang]
    conv = win.ctl.store.new(title)
    for role, text in turns:
        win.ctl.store.append(conv.id, role, text)
    catalog = load_catalog()
    machine = probe(paths.models_dir())
    win.ctl.machine = machine
    win.ctl.set_catalog(catalog)
    for other, days, pinned in OTHER_CHATS[lang]:
        c = win.ctl.store.new(other)
        win.ctl.store.append(c.id, "user", other)
        win.ctl.store.db.execute("UPDATE conversations SET updated = ?, pinned = ? WHERE id = ?",
                                 (time.time() - days * 86400, int(pinned), c.id))
    win.chat.conv_id = None
    win.chat.reload_list()
    win.chat.list.setCurrentItem(win.chat.list.item_for(conv.id))  # the sample chat open
    win.chat.partial = partial
    win.chat.input.setPlainText("")
    pump(app, 0.3)
    shots = []
    pages = [("chat", None), ("completion", None), ("models", None), ("settings", None), ("welcome", None)]
    for name, _ in pages:
        if (name, theme, lang) not in wanted:
            continue
        if name == "welcome":
            model, advice = recommend(catalog, machine)
            win.chat.welcome.set_recommendation(machine, model, advice)
            win.chat.show_welcome(True)
            win.show_page("chat")
        else:
            win.chat.show_welcome(False)
            win.show_page(name)
        if name == "completion":
            win.completion.apply_preset()
        pump(app, 0.3)
        if name == "chat":  # the mouse over the answer: its actions
            win.chat.view.show_actions(1)
        path = out / f"{name}-{theme}-{lang}.png"
        win.grab().save(str(path))
        shots.append(path)
    win.close()
    return shots


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--all", action="store_true", help="every page in light/dark, English/Chinese")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pages = ("chat", "completion", "models", "settings", "welcome")
    wanted = {(p, t, l) for p in pages for t in ("light", "dark") for l in ("en", "zh")} if args.all else README_SHOTS
    for theme in ("light", "dark"):
        for lang in ("en", "zh"):
            if any(t == theme and l == lang for _p, t, l in wanted):
                for p in render(args.out, theme, lang, wanted):
                    print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
