"""Build step of the Linux bundle: a Chinese font for machines that have none.

A desktop Linux without a CJK font shows Chinese as boxes. No CJK font is on PyPI, so this takes an
OFL-licensed one from the build machine's system packages (Debian/Ubuntu `fonts-noto-cjk`, else
`fonts-wqy-microhei`), keeps only the characters Roost needs (ASCII, CJK punctuation, the 6,763
characters of GB2312 and every character of Roost's own Chinese text) with fontTools, and writes it
with its licence. The app registers it at start only when the system has no Chinese font
(roost.gui.app.add_cjk_font).

    python packaging/cjk_font.py OUT_DIR     # writes OUT_DIR/roost-cjk.otf and roost-cjk-LICENSE.txt
"""

from __future__ import annotations

import sys
from pathlib import Path

# (font file, the face wanted in a collection, its licence as the package ships it)
CANDIDATES = [
    ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", "Noto Sans CJK SC",
     "/usr/share/doc/fonts-noto-cjk/copyright"),
    ("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", "WenQuanYi Micro Hei",
     "/usr/share/doc/fonts-wqy-microhei/copyright"),
]
FONT, LICENSE = "roost-cjk.otf", "roost-cjk-LICENSE.txt"


def characters() -> str:
    """Every character the subset keeps."""
    chars = {chr(c) for c in range(0x20, 0x7F)}
    chars |= {chr(c) for c in range(0x3000, 0x3040)}  # CJK symbols and punctuation
    chars |= {chr(c) for c in range(0xFF00, 0xFFF0)}  # full-width forms
    chars |= set("“”‘’…—·•★▸▾▍‹›")
    for hi in range(0xA1, 0xF8):  # GB2312: the characters of everyday Simplified Chinese
        for lo in range(0xA1, 0xFF):
            try:
                chars.add(bytes((hi, lo)).decode("gb2312"))
            except UnicodeDecodeError:
                pass
    from roost.gui.i18n import TEXT

    for text in TEXT.values():
        chars |= set(text)
    try:
        from roost.core.catalog import load_catalog

        for m in load_catalog(refreshed=False):
            chars |= set(m.description_zh)
    except Exception:  # noqa: BLE001 -- the catalog's few extra characters are a nicety
        pass
    return "".join(sorted(chars))


def build(out: Path, text: str | None = None) -> Path | None:
    """The subset in `out` (None when the machine has no such font). `text`: other characters to keep."""
    from fontTools import subset, ttLib

    for path, face, licence in CANDIDATES:
        if not Path(path).is_file():
            continue
        count = len(ttLib.TTCollection(path).fonts) if path.endswith(".ttc") else 1
        index = 0
        for i in range(count):
            font = ttLib.TTFont(path, fontNumber=i, lazy=True)
            if face in (font["name"].getDebugName(1) or ""):
                index = i
                break
        font = ttLib.TTFont(path, fontNumber=index)
        options = subset.Options()
        options.layout_features = ["*"]
        options.name_IDs = ["*"]
        options.notdef_outline = True
        sub = subset.Subsetter(options)
        sub.populate(text=text if text is not None else characters())
        sub.subset(font)
        out.mkdir(parents=True, exist_ok=True)
        font.save(out / FONT)
        licence_text = Path(licence).read_text(encoding="utf-8", errors="replace") if Path(licence).is_file() else ""
        (out / LICENSE).write_text(f"{face}, subset by Roost's build from {path}.\n"
                                   f"SIL Open Font License 1.1.\n\n{licence_text}", encoding="utf-8")
        print(f"cjk font: {face} subset to {len(text) if text is not None else len(characters())} characters, "
              f"{(out / FONT).stat().st_size / 1e6:.1f} MB (from {Path(path).stat().st_size / 1e6:.1f} MB)")
        return out / FONT
    print("cjk font: no OFL CJK font on this machine (apt install fonts-noto-cjk); the bundle will rely "
          "on the system's fonts for Chinese", file=sys.stderr)
    return None


if __name__ == "__main__":
    build(Path(sys.argv[1]))  # (no font on the build machine is not a failure: the bundle still works)
