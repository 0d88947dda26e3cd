"""The sampling controls (chat side panel, completion page), defaulting to the user's settings."""

from __future__ import annotations

from PySide6.QtWidgets import QDoubleSpinBox, QFormLayout, QSpinBox, QWidget

from roost.engine.sampling import CHAT_SAMPLING
from roost.gui.i18n import tr

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
    def __init__(self, settings, overrides: dict | None = None):
        super().__init__()
        self.setMaximumWidth(260)
        form = QFormLayout(self)
        values = {**defaults(settings), **(overrides or {})}
        self.boxes = {}
        for key, label, lo, hi, step, dec in FIELDS:
            box = QSpinBox() if dec is None else QDoubleSpinBox(decimals=dec)
            box.setRange(lo, hi)
            box.setSingleStep(step)
            box.setValue(values[key])
            self.boxes[key] = box
            form.addRow(tr(label), box)

    def values(self) -> dict:
        return {k: b.value() for k, b in self.boxes.items()}

    def set_values(self, values: dict) -> None:
        for k, v in values.items():
            if k in self.boxes:
                self.boxes[k].setValue(v)

    def params(self, **extra):
        from roost.engine.sampling import SamplingParams

        return SamplingParams(**self.values(), **extra)
