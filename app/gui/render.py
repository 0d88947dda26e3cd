"""Chat messages as rich text for the chat view (a QTextBrowser: no web engine in the bundle).

Markdown is parsed by markdown-it-py (CommonMark, tables, strikethrough; raw HTML in a reply is
shown as text, never interpreted) and code is coloured by Pygments with inline styles, which Qt's
rich text understands. LaTeX stays readable as code. Each message is one table, a bubble beside
its avatar, so the view can replace the last one alone while a reply streams in.

The functions here build strings only; `ChatPage` owns the widget.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from functools import lru_cache

from roost.gui.i18n import tr

_MATH_BLOCK = re.compile(r"\$\$(.+?)\$\$", re.S)
_MATH_INLINE = re.compile(r"(?<![\\$\w])\$(?!\s)([^$\n]{1,200}?)(?<!\s)\$(?![\w$])")


@dataclass(frozen=True)
class Palette:
    text: str
    muted: str
    user_bubble: str
    bot_bubble: str
    code_bg: str
    code_border: str
    link: str
    pygments_style: str
    border_muted: str  # a control that cannot be used now


LIGHT = Palette("#1d2128", "#6b717c", "#dce8fb", "#ffffff", "#f4f5f7", "#dfe1e5", "#2f6fdb", "default", "#c5c9d0")
DARK = Palette("#e6e8eb", "#9aa0aa", "#27406a", "#2a2d33", "#1c1e22", "#3a3d44", "#7aa7f0", "monokai", "#555a63")


def _math_as_code(text: str) -> str:
    """$$...$$ becomes a ```latex block and $...$ (with a TeX-looking body) an inline code span."""
    text = _MATH_BLOCK.sub(lambda m: f"\n```latex\n{m.group(1).strip()}\n```\n", text)

    def inline(m):
        body = m.group(1)
        return f"`{body}`" if any(c in body for c in "\\^_{}=") else m.group(0)

    return _MATH_INLINE.sub(inline, text)


@lru_cache(maxsize=1)
def _parser():
    from markdown_it import MarkdownIt

    # breaks: a line break the model (or the user) wrote stays a line break, as in every chat app;
    # plain CommonMark would join a poem's lines into one paragraph.
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False, "breaks": True})
    md.enable(["table", "strikethrough"])
    return md


def _highlight(code: str, lang: str, style: str) -> str:
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import TextLexer, get_lexer_by_name
    from pygments.util import ClassNotFound

    try:
        lexer = get_lexer_by_name(lang) if lang else TextLexer()
    except ClassNotFound:
        lexer = TextLexer()
    return highlight(code, lexer, HtmlFormatter(noclasses=True, nowrap=True, style=style))


@lru_cache(maxsize=2048)
def markdown_html(text: str, palette: Palette = LIGHT, code_base: str = "") -> tuple[str, tuple[str, ...]]:
    """(HTML for a message's text, the code of each of its code blocks). A code block gets a bar
    with its language and a copy link ``roost:code/<code_base><n>``."""
    md = _parser()
    tokens = md.parse(_math_as_code(text))
    blocks: list[str] = []
    out = []
    from markdown_it.renderer import RendererHTML

    renderer = RendererHTML(md)

    def fence(tok) -> str:
        lang = (tok.info or "").strip().split()[0] if tok.info else ""
        code = tok.content.rstrip("\n")
        n = len(blocks)
        blocks.append(code)
        body = _highlight(code, lang, palette.pygments_style).rstrip("\n")
        label = html.escape(lang or tr("code"))
        return (f'<table width="100%" cellspacing="0" cellpadding="8" style="margin-top:6px; margin-bottom:6px; '
                f'background-color:{palette.code_bg}; border:1px solid {palette.code_border};">'
                f'<tr><td style="color:{palette.muted}; font-size:small;">{label}'
                f' &nbsp; <a href="roost:code/{code_base}{n}" style="color:{palette.link};">{tr("copy")}</a></td></tr>'
                f'<tr><td><pre style="font-family:monospace; white-space:pre-wrap; margin:0;">{body}</pre></td></tr></table>')

    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.type in ("fence", "code_block"):
            out.append(fence(tok))
            i += 1
            continue
        j = i  # render a run of non-code tokens together
        while j < len(tokens) and tokens[j].type not in ("fence", "code_block"):
            j += 1
        out.append(renderer.render(tokens[i:j], md.options, {}))
        i = j
    result = "".join(out)
    result = result.replace("<code>", '<code style="font-family:monospace; background-color:'
                            f'{palette.code_bg};">')
    result = result.replace("<table>", f'<table border="1" cellspacing="0" cellpadding="4" '
                            f'style="border-color:{palette.code_border}; border-style:solid;">')
    return result, tuple(blocks)


BUBBLE_INSET = 11  # a bubble's cell padding and border (px): where its text starts inside it


def message_html(*, who: str, role: str, body_html: str, avatar: str, palette: Palette, thought_html: str = "",
                 anchor: str = "", versions: tuple[int, int, str, str] | None = None) -> str:
    """One message: avatar and name, the bubble (as wide as its text needs, up to the row), then a
    row with the version switch ("‹ 2/3 ›": this version, how many, the urls of the previous and
    next; "" = none) where the view shows the message's actions while the mouse is over it."""
    bubble = palette.user_bubble if role == "user" else palette.bot_bubble

    def link(label: str, url: str) -> str:
        style = f"color:{palette.muted}; text-decoration:none;"
        return (f'<a href="{html.escape(url)}" style="{style}">{html.escape(label)}</a>' if url
                else f'<span style="color:{palette.border_muted};">{html.escape(label)}</span>')

    row = "&nbsp;"
    if versions is not None:
        v, n, prev_url, next_url = versions
        row = f'{link("‹", prev_url)} <span style="color:{palette.muted};">{v}/{n}</span> {link("›", next_url)}'
    name = f'<b>{html.escape(who)}</b>'
    avatar_cell = f'<td width="40" valign="top"><img src="{avatar}" width="30" height="30"></td>'
    side = ' align="right"' if role == "user" else ""
    if "<table" in body_html or "<hr" in thought_html:  # code, tables: the row's width (shrunk, code wraps)
        side += ' width="100%"'
    pad = BUBBLE_INSET - 1
    bubble_table = (f'<table{side} cellspacing="0" cellpadding="{pad}" style="margin-top:4px; '
                    f'background-color:{bubble}; border:1px solid {palette.code_border};">'
                    f'<tr><td>{thought_html}{body_html}</td></tr></table>')
    if role == "user":  # the user's own words on the right, as in a messenger
        return (f'<a name="{anchor}"></a>'
                f'<table width="100%" cellspacing="0" cellpadding="0" style="margin-top:10px;">'
                f'<tr><td width="12%"></td><td valign="top" align="right">{name}{bubble_table}'
                f'<div align="right" style="margin-top:4px;">{row}</div></td>'
                f'<td width="8"></td>{avatar_cell}</tr></table>')
    return (f'<a name="{anchor}"></a>'
            f'<table width="100%" cellspacing="0" cellpadding="0" style="margin-top:10px;">'
            f'<tr>{avatar_cell}<td valign="top">{name}{bubble_table}'
            f'<div style="margin-top:4px;">{row}</div>'
            f'</td><td width="4%"></td></tr></table>')
