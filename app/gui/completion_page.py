"""Completion: free continuation of the user's text (stories, the novel models), with presets."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QTextCursor
from PySide6.QtWidgets import (
    QComboBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from roost.gui import icons
from roost.gui.i18n import pick, tr
from roost.gui.sampling import SamplingPanel

PRESETS = {  # key: ((name en, zh), (opening en, zh), sampling, (what it does en, zh))
    "story": (("Story", "故事"), ("Once upon a time, in a village at the edge of the forest,",
                                 "很久很久以前，在森林边上的一个小村庄里，"), {"temperature": 1.0, "top_p": 0.7},
              ("Continues your text like a storybook.", "像讲故事一样接着你的文字往下写。")),
    "poem": (("Poem", "诗歌"), ("The moon over the quiet harbour\n", "静静的港湾上，月光\n"),
             {"temperature": 1.1, "top_p": 0.8},
             ("Writes verse, a little freer with words.", "写诗，用词更自由一些。")),
    "email": (("Email", "邮件"), ("Subject: Meeting next week\n\nDear team,\n\n", "主题：下周的会议\n\n各位同事：\n\n"),
              {"temperature": 0.8, "top_p": 0.5},
              ("Finishes a letter in a plain, predictable tone.", "用平实、稳妥的语气把信写完。")),
    "novel": (("Chinese novel", "小说"), ("第一章\n\n夜色渐深，城门口的灯笼在风里摇晃。",) * 2,
              {"temperature": 1.0, "top_p": 0.7},
              ("Continues a Chinese novel chapter by chapter.", "接着写中文小说的章节。")),
}
# the engine's finish reasons, as the result line says them
FINISHED = {"stop": "finished", "length": "reached the token limit", "cancelled": "stopped"}


def parse_stops(text: str) -> tuple[str, ...]:
    """Comma-separated stop strings; \\n and \\t may be written as escapes."""
    out = []
    for s in text.split(","):
        s = s.strip().replace("\\n", "\n").replace("\\t", "\t")
        if s:
            out.append(s)
    return tuple(out)


class CompletionPage(QWidget):
    def __init__(self, ctl):
        super().__init__()
        self.ctl = ctl
        self.rid = None
        self.stop_flag = None
        v = QVBoxLayout(self)
        top = QHBoxLayout()
        self.preset = QComboBox()
        for key, (names, _opening, _sampling, _about) in PRESETS.items():
            self.preset.addItem(pick(*names), key)
        self.preset.activated.connect(self.apply_preset)
        self.preset.currentIndexChanged.connect(self._describe_preset)
        self.preset.setAccessibleName(tr("Preset:").rstrip(":："))
        self.about = QLabel(objectName="hint", wordWrap=True)
        self.advanced = QPushButton(tr("Advanced"), checkable=True)
        self.advanced.setAccessibleName(tr("Advanced settings"))
        top.addWidget(QLabel(tr("Preset:")))
        top.addWidget(self.preset)
        top.addWidget(self.about, 1)
        top.addWidget(self.advanced)
        self.text = QPlainTextEdit(placeholderText=tr("Start writing, then press Generate."))
        self.text.setTabChangesFocus(True)  # (Tab moves to the next control: no keyboard trap)
        self.text.setAccessibleName(tr("Your text"))
        self.text.textChanged.connect(self.update_controls)
        from roost.engine.sampling import COMPLETION_SAMPLING

        # the knobs and stop strings, each explained, behind "Advanced"
        inner = QWidget()
        pv = QVBoxLayout(inner)
        pv.setContentsMargins(0, 0, 6, 0)
        self.sampling = SamplingPanel(ctl.settings.current, {**COMPLETION_SAMPLING, "max_tokens": 300}, explained=True)
        self.stops = QLineEdit(placeholderText="\\n\\n, THE END")
        self.stops.setAccessibleName(tr("Stop strings:").rstrip(":："))
        pv.addWidget(self.sampling)
        pv.addWidget(QLabel(tr("Stop strings:")))
        pv.addWidget(self.stops)
        pv.addWidget(QLabel(tr("Writing stops when one of these appears (separate them with commas; "
                               "\\n is a new line)."), wordWrap=True, objectName="hint"))
        pv.addStretch(1)
        self.panel = QScrollArea(widgetResizable=True, visible=False, frameShape=QFrame.NoFrame)
        self.panel.setWidget(inner)
        self.panel.setFixedWidth(340)
        self.panel.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.advanced.toggled.connect(self.panel.setVisible)
        mid = QHBoxLayout()
        mid.addWidget(self.text, 1)
        mid.addWidget(self.panel)
        bottom = QHBoxLayout()
        self.gen_btn = QPushButton(tr("Generate"), objectName="primary", clicked=self.generate)
        self.stop_btn = QPushButton(tr("Stop"), clicked=self.stop)
        self.info = QLabel(objectName="hint")
        self.why_not = QLabel(objectName="hint")  # why Generate cannot be pressed now
        icons.give(self.gen_btn, "generate", on_accent=True)
        icons.give(self.stop_btn, "stop")
        icons.give(self.advanced, "sampling")
        bottom.addWidget(self.info, 1)
        bottom.addWidget(self.why_not)
        bottom.addWidget(self.stop_btn)
        bottom.addWidget(self.gen_btn)
        v.addLayout(top)
        v.addLayout(mid, 1)
        v.addLayout(bottom)
        ctl.modelChanged.connect(self.update_controls)
        ctl.piece.connect(self.on_piece)
        ctl.done.connect(self.on_done)
        ctl.failed.connect(self.on_failed)
        self._describe_preset()
        self.update_controls()

    def _describe_preset(self) -> None:
        self.about.setText(pick(*PRESETS[self.preset.currentData()][3]))

    def apply_preset(self) -> None:
        _names, openings, sampling, _about = PRESETS[self.preset.currentData()]
        self.text.setPlainText(pick(*openings))
        self.sampling.set_values(sampling)

    def generate(self) -> None:
        from roost.engine.generate import StopFlag

        prompt = self.text.toPlainText()
        if not prompt.strip() or self.rid is not None or self.ctl.info is None:
            return
        self.stop_flag = StopFlag()
        req = {"text": prompt, "params": self.sampling.params(stop=parse_stops(self.stops.text())),
               "stop": self.stop_flag}
        self.text.moveCursor(QTextCursor.End)
        self.rid = self.ctl.request("complete", req)
        self.update_controls()

    def stop(self) -> None:
        if self.stop_flag is not None:
            self.stop_flag.set()

    def on_piece(self, rid: int, piece: str) -> None:
        if rid == self.rid:
            cursor = self.text.textCursor()
            cursor.movePosition(QTextCursor.End)
            cursor.insertText(piece)
            self.text.ensureCursorVisible()

    def on_done(self, rid: int, reply) -> None:
        if rid == self.rid:
            why = tr(FINISHED.get(reply.finish_reason, "finished"))
            self.info.setText(tr("{n} tokens · {tps:.1f} tokens/s · {why}", n=reply.tokens,
                                 tps=reply.tokens_per_second, why=why))
            self._finish()

    def on_failed(self, rid: int, message: str) -> None:
        if rid == self.rid:
            self.ctl.show_error(message)
            self._finish()

    def _finish(self) -> None:
        self.rid = self.stop_flag = None
        self.update_controls()

    def shutdown(self) -> None:
        self.stop()

    def update_controls(self) -> None:
        busy = self.rid is not None
        ready = self.ctl.info is not None
        has_text = bool(self.text.toPlainText().strip())
        self.gen_btn.setEnabled(ready and has_text and not busy)
        self.stop_btn.setEnabled(busy)
        self.text.setReadOnly(busy)
        if busy:
            hint = ""
        elif not ready:
            hint = tr("Load a model first (Models page).")
        elif not has_text:
            hint = tr("Write a beginning or choose a preset first.")
        else:
            hint = ""
        self.why_not.setText(hint)
