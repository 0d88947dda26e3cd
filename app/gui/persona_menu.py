"""The chat's Persona menu: how a conversation starts. A system prompt (the first entries), or a
state-tuned persona (★): a state file of the models folder that fits the loaded model, whose
starting state the conversation begins from (roost.engine.tuned_state). The choice is kept with
the conversation (conversations.system / conversations.persona)."""

from __future__ import annotations

from PySide6.QtWidgets import QComboBox

from roost.gui.i18n import tr

PERSONAS = {
    "Assistant": "",
    "Concise": "You are a helpful assistant. Answer briefly and precisely.",
    "Translator": "You translate the user's text between Chinese and English, faithfully and fluently.",
    "Writer": "You are a creative writer. Write vivid, original prose in the language of the request.",
}


class PersonaMenu(QComboBox):
    def __init__(self, ctl, current):
        """`current`: a function giving the id of the conversation shown (None: none), with which
        a choice is kept."""
        super().__init__()
        self.ctl, self.current = ctl, current
        self.setAccessibleName(tr("Persona"))
        self.setToolTip(tr("A system prompt, or a state-tuned persona (★): a starting state trained "
                           "for a style or a role, for the loaded model."))
        self.fill()
        self.currentIndexChanged.connect(lambda _i: self.apply_to(self.current()))

    def choice(self) -> tuple[str, str]:
        """("system", prompt) or ("state", the state file's name)."""
        kind, _, value = (self.currentData() or "system:").partition(":")
        return kind, value

    def fill(self) -> None:
        """The system-prompt personas, then the state files of the models folder that fit the
        loaded model; the conversation's choice selected."""
        fitting = []
        if self.ctl.info is not None:  # (never before: the library imports torch, and the window comes first)
            from roost.core.library import personas

            try:
                fitting = [p for p in personas(self.ctl.models_folder(), self.ctl.catalog)
                           if self.ctl.info.name in p.fits]
            except OSError:
                fitting = []
        self.blockSignals(True)
        self.clear()
        for name, prompt in PERSONAS.items():
            self.addItem(tr(name), "system:" + prompt)  # strings: Qt compares them in findData
        for p in fitting:
            self.addItem(f"★ {p.name}", "state:" + p.path.name)
        self.blockSignals(False)
        self.show_for(self.current())

    def show_for(self, conv_id: int | None) -> None:
        """Select the choice of conversation `conv_id`."""
        conv = self.ctl.store.get(conv_id) if conv_id is not None else None
        want = f"state:{conv.persona}" if conv and conv.persona else "system:" + (conv.system if conv else "")
        idx = self.findData(want)
        if idx < 0 and conv and conv.persona:  # its state file is gone or does not fit this model
            self.addItem(tr("★ {name} (not available)", name=conv.persona), want)
            idx = self.count() - 1
        self.blockSignals(True)
        self.setCurrentIndex(max(idx, 0))
        self.blockSignals(False)

    def apply_to(self, conv_id: int | None) -> None:
        """Keep the current choice with conversation `conv_id`."""
        if conv_id is None:
            return
        kind, value = self.choice()
        self.ctl.store.set_persona(conv_id, value if kind == "state" else "")
        self.ctl.store.set_system(conv_id, "" if kind == "state" else value)
