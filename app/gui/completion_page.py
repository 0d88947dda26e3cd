"""Completion: free continuation of the user's text (stories, the novel models), with presets."""

from __future__ import annotations

from PySide6.QtGui import QTextCursor
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from roost.gui.i18n import pick, tr
from roost.gui.sampling import SamplingPanel

PRESETS = {  # key: ((name en, zh), (opening en, zh), sampling)
    "story": (("Story", "故事"), ("Once upon a time, in a village at the edge of the forest,",
                                 "很久很久以前，在森林边上的一个小村庄里，"), {"temperature": 1.0, "top_p": 0.7}),
    "poem": (("Poem", "诗歌"), ("The moon over the quiet harbour\n", "静静的港湾上，月光\n"),
             {"temperature": 1.1, "top_p": 0.8}),
    "email": (("Email", "邮件"), ("Subject: Meeting next week\n\nDear team,\n\n", "主题：下周的会议\n\n各位同事：\n\n"),
              {"temperature": 0.8, "top_p": 0.5}),
    "novel": (("Chinese novel", "小说"), ("第一章\n\n夜色渐深，城门口的灯笼在风里摇晃。",) * 2,
              {"temperature": 1.0, "top_p": 0.7}),
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
        for key, (names, _opening, _sampling) in PRESETS.items():
            self.preset.addItem(pick(*names), key)
        self.preset.activated.connect(self.apply_preset)
        self.stops = QLineEdit(placeholderText="\\n\\n, THE END")
        top.addWidget(QLabel(tr("Preset:")))
        top.addWidget(self.preset)
        top.addWidget(QLabel(tr("Stop strings:")))
        top.addWidget(self.stops, 1)
        self.text = QPlainTextEdit(placeholderText=tr("Start writing, then press Generate."))
        from roost.engine.sampling import COMPLETION_SAMPLING

        self.sampling = SamplingPanel(ctl.settings.current, {**COMPLETION_SAMPLING, "max_tokens": 300})
        mid = QHBoxLayout()
        mid.addWidget(self.text, 1)
        mid.addWidget(self.sampling)
        bottom = QHBoxLayout()
        self.gen_btn = QPushButton(tr("Generate"), objectName="primary", clicked=self.generate)
        self.stop_btn = QPushButton(tr("Stop"), clicked=self.stop)
        self.info = QLabel(objectName="hint")
        bottom.addWidget(self.info, 1)
        bottom.addWidget(self.stop_btn)
        bottom.addWidget(self.gen_btn)
        v.addLayout(top)
        v.addLayout(mid, 1)
        v.addLayout(bottom)
        ctl.modelChanged.connect(self.update_controls)
        ctl.piece.connect(self.on_piece)
        ctl.done.connect(self.on_done)
        ctl.failed.connect(self.on_failed)
        self.update_controls()

    def apply_preset(self) -> None:
        _names, openings, sampling = PRESETS[self.preset.currentData()]
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
        self.gen_btn.setEnabled(self.ctl.info is not None and not busy)
        self.stop_btn.setEnabled(busy)
        self.text.setReadOnly(busy)
