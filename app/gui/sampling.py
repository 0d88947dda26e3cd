"""The sampling controls (chat side panel, completion page), defaulting to the user's settings."""

from __future__ import annotations

from PySide6.QtWidgets import QDoubleSpinBox, QFormLayout, QLabel, QSpinBox, QWidget

from roost.engine.sampling import CHAT_SAMPLING
from roost.gui.i18n import tr

# what each knob does, in one line (shown under it, and as its tooltip)
EXPLAIN = {
    "temperature": "Higher: more varied and surprising text. Lower: more predictable.",
    "top_p": "Picks only among the likeliest words that together make up this share. Lower is safer.",
    "top_k": "Picks only among this many likeliest words. 0: no limit.",
    "presence_penalty": "Makes any word already used less likely: more new topics.",
    "frequency_penalty": "Makes a word less likely the more often it was used: less repetition.",
    "penalty_decay": "How slowly those penalties fade for words used long ago (1: never).",
    "max_tokens": "The longest the text can get, in tokens (a token is about a Chinese character "
                  "or three quarters of an English word).",
}

DEFAULTS = {**CHAT_SAMPLING, "max_tokens": 500}  # the engine's chat defaults, and a reply length
FIELDS = [  # key, label, minimum, maximum, step, decimals (None: integer)
    ("temperature", "Temperature:", 0.0, 5.0, 0.1, 2),
    ("top_p", "Top P:", 0.0, 1.0, 0.05, 2),
    ("top_k", "Top K:", 0, 1000, 1, None),
    ("presence_penalty", "Presence penalty:", -2.5, 2.5, 0.1, 2),
    ("frequency_penalty", "Frequency penalty:", -2.5, 2.5, 0.1, 2),
    ("penalty_decay", "Penalty decay:", 0.9, 1.0, 0.001, 3),
    ("max_tokens", "Max tokens:", 1, 8192, 50, None),
]


def defaults(settings) -> dict:
    """The sampling defaults with the user's saved changes (a Settings)."""
    return {**DEFAULTS, **settings.sampling}


class SamplingPanel(QWidget):
    """The knobs, each with its one-line explanation under it (`explained=False`: as tooltips only)."""

    def __init__(self, settings, overrides: dict | None = None, explained: bool = False):
        super().__init__()
        self.setMaximumWidth(320 if explained else 260)
        form = QFormLayout(self)
        values = {**defaults(settings), **(overrides or {})}
        self.boxes = {}
        for key, label, lo, hi, step, dec in FIELDS:
            box = QSpinBox() if dec is None else QDoubleSpinBox(decimals=dec)
            box.setRange(lo, hi)
            box.setSingleStep(step)
            box.setValue(values[key])
            self.boxes[key] = box
            box.setToolTip(tr(EXPLAIN[key]))
            box.setAccessibleName(tr(label).rstrip(":："))
            form.addRow(tr(label), box)
            if explained:
                note = QLabel(tr(EXPLAIN[key]), wordWrap=True, objectName="hint")
                form.addRow(note)

    def values(self) -> dict:
        return {k: b.value() for k, b in self.boxes.items()}

    def set_values(self, values: dict) -> None:
        for k, v in values.items():
            if k in self.boxes:
                self.boxes[k].setValue(v)

    def params(self, **extra):
        from roost.engine.sampling import SamplingParams

        return SamplingParams(**self.values(), **extra)
