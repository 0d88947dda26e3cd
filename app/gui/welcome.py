"""First run: what this computer can run, the one model we suggest and why, one click to get it."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QFrame,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from roost.gui import icons
from roost.gui.i18n import pick, split_bilingual, tr


class WelcomePanel(QWidget):
    started = Signal()  # the recommended model downloaded and is loading: a chat can begin

    def __init__(self, ctl):
        super().__init__()
        self.ctl = ctl
        self.model = None
        self.advice = None
        self.job = None
        outer = QVBoxLayout(self)
        outer.addStretch(1)
        card = QFrame(objectName="card")
        card.setFixedWidth(600)
        v = QVBoxLayout(card)
        v.setContentsMargins(28, 24, 28, 24)
        v.setSpacing(10)
        self.title = QLabel(tr("Welcome to Roost"), objectName="title")
        self.machine = QLabel(tr("Checking this computer…"), wordWrap=True)
        self.heading = QLabel(tr("Recommended for this computer:"), objectName="hint")
        self.name = QLabel(wordWrap=True)
        self.name.setStyleSheet("font-size: 16px; font-weight: 600;")
        self.about = QLabel(wordWrap=True)
        self.reason = QLabel(wordWrap=True, objectName="hint")
        self.button = QPushButton(tr("Download and start chatting"), objectName="primary", clicked=self.start)
        self.button.setEnabled(False)
        self.bar = QProgressBar(visible=False, maximum=1000, textVisible=False)
        self.progress = QLabel(wordWrap=True, objectName="hint", visible=False)
        # a download that failed says so here, and only here: what failed, from where, what to do
        self.problem = QLabel(wordWrap=True, visible=False, objectName="problem",
                              textInteractionFlags=Qt.TextSelectableByMouse)
        self.problem.setStyleSheet("color: #c0392b;")
        self.settings_btn = QPushButton(tr("Proxy and download source…"), visible=False, clicked=self.open_settings)
        self.have_file = QPushButton(tr("I already have a model file…"), clicked=self.import_file)
        icons.give(self.button, "download", on_accent=True)
        icons.give(self.have_file, "file")
        icons.give(self.settings_btn, "settings")
        for w in (self.title, self.machine, self.heading, self.name, self.about, self.reason, self.button,
                  self.bar, self.progress, self.problem, self.settings_btn, self.have_file):
            v.addWidget(w)
        row = QVBoxLayout()
        row.addWidget(card, 0, Qt.AlignHCenter)
        outer.addLayout(row)
        outer.addStretch(2)

    def set_recommendation(self, machine, model, advice) -> None:
        from roost.core.download import human_size, memory_size  # (memory: the unit of `roost doctor`)

        self.model, self.advice = model, advice
        gpu = machine.gpus[0] if machine.gpus else None
        hw = [tr("{n} CPU cores", n=machine.cpu_cores), tr("{size} RAM", size=memory_size(machine.ram_total))]
        if gpu is not None:
            hw.append(f"{gpu.name} ({memory_size(gpu.total_bytes)})")
        self.machine.setText(" · ".join(hw))
        self.name.setText(f"{model.display} — {human_size(model.size_bytes)}")
        self.about.setText(pick(model.description, model.description_zh))
        expected = pick(*advice.expected_speed)
        self.reason.setText((tr("Expected speed on this computer: {speed}.", speed=expected) + " " if expected else "")
                            + pick(advice.reason, advice.reason_zh))
        self.button.setEnabled(True)

    def start(self) -> None:
        if self.model is None or self.ctl.queue is None:
            return
        self.button.setEnabled(False)
        self.problem.hide()
        self.settings_btn.hide()
        self.bar.setValue(0)
        self.bar.show()
        self.job = self.ctl.download(self.model)
        self.ctl.jobChanged.connect(self.on_job)

    def on_job(self, job) -> None:
        if self.job is None or job is not self.job:
            return
        p = job.progress
        if job.state == "running" and p is not None and p.total:
            self.bar.setValue(int(1000 * p.done / p.total))
            self.progress.setText(tr("Downloading {name}: {pct}%", name=self.model.display,
                                     pct=int(100 * p.done / p.total)))
            self.progress.show()
        elif job.state == "done":
            self.progress.hide()
            self.job = None
            self.ctl.jobChanged.disconnect(self.on_job)
            self.ctl.load_model(job.path, self.advice.strategy)
            self.started.emit()
        elif job.state in ("failed", "paused", "cancelled"):
            self.bar.hide()
            self.progress.hide()
            if job.state == "failed":
                self.problem.setText(split_bilingual(job.error or ""))
                self.problem.show()
                self.settings_btn.show()
            self.button.setText(tr("Try again"))
            self.button.setEnabled(True)
            self.job = None
            self.ctl.jobChanged.disconnect(self.on_job)

    def open_settings(self) -> None:
        self.ctl.navigate.emit("settings")

    def import_file(self) -> None:
        from roost.gui.dialogs import choose_model_file

        path = choose_model_file(self)
        model = self.ctl.import_model(path) if path else None
        if model is not None:  # imported: load it (the chat opens when it has loaded)
            self.ctl.load_model(model)
