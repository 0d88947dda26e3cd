"""Models: the catalog with what fits this computer, downloads, local files, the strategy to run with."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QAbstractTableModel, QSortFilterProxyModel, Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from roost.gui import dialogs, icons
from roost.gui.model_cards import FIT_ROLE, GROUP, model_list
from roost.gui.i18n import pick, split_bilingual, tr

if TYPE_CHECKING:  # (importing the library at start-up would load torch before the window shows)
    from roost.core.library import ModelRow as Row

PRESETS = ["cpu int8", "cpu int4", "cpu bf16", "cpu fp32", "cuda fp16", "cuda int8", "cuda fp16 *20 -> cpu fp32", "mps fp32"]
FIT_COLORS = {"fast": "#2e8b57", "comfortable": "#3b7dd8", "slow": "#c77700", "tight": "#c77700",
              "won't fit": "#c0392b"}
# the words a strategy is made of, each with one line on what it means
TERMS = [
    ("cuda", "cuda: runs on the NVIDIA graphics card (fastest when the model fits in its memory)."),
    ("mps", "mps: runs on the Apple Silicon graphics unit."),
    ("cpu", "cpu: runs on the processor and ordinary memory (works everywhere, slower)."),
    ("i8", "int8 / i8: weights kept in 8 bits: half the memory of 16 bits and faster to read, a little less exact."),
    ("i4", "int4 / i4: weights kept in 4 bits: half the memory of int8, noticeably less exact; faster than "
           "int8 on processors with AVX-512, as fast on others."),
    ("fp16", "fp16: weights in 16-bit floating point: half the memory of fp32, as exact as needed."),
    ("bf16", "bf16: another 16-bit format, with fp32's range: for processors that support it."),
    ("fp32", "fp32: full 32-bit precision: the most exact and the most memory."),
    ("*", "*N -> ...: the first N layers run on the first device, the rest on the next one."),
]


def explain_strategy(strategy: str) -> list[str]:
    """One line for each term the strategy uses."""
    words = strategy.lower()
    out = []
    for term, line in TERMS:
        if term in ("i8", "i4"):
            present = f"int{term[1]}" in words or term in words
        elif term == "*":
            present = "*" in words or "->" in words
        else:
            present = term in words.replace("fp16i8", "fp16 i8").replace("fp32i8", "fp32 i8")
        if present:
            out.append(tr(line))
    return out


def eta_text(seconds: float | None) -> str:
    if seconds is None:
        return "--"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class CatalogTable(QAbstractTableModel):
    HEADERS = ("Model", "Good for", "Size", "On this computer", "Status")  # (the name says the family)

    def __init__(self, page):
        super().__init__()
        self.page = page
        self.rows: list[Row] = []

    def rowCount(self, parent=None):
        return 0 if parent is not None and parent.isValid() else len(self.rows)

    def columnCount(self, parent=None):
        return len(self.HEADERS)

    def headerData(self, section, orientation, role=Qt.DisplayRole):
        if orientation == Qt.Horizontal and role == Qt.DisplayRole:
            return tr(self.HEADERS[section])
        return None

    def text(self, row: Row, col: int) -> str:
        from roost.core.download import human_size

        if col == 0:
            return ("★ " if self.page.is_recommended(row) else "") + row.name
        if col == 1:
            return good_for(row)
        if col == 2:
            size = row.model.size_bytes if row.model else (row.path.stat().st_size if row.path.exists() else 0)
            return human_size(size)
        if col == 3:
            return pick(*row.advice.fit_words) if row.advice else ""  # (the words roost models prints)
        return self.page.status_text(row)

    def data(self, index, role=Qt.DisplayRole):
        row = self.rows[index.row()]
        col = index.column()
        if role == Qt.DisplayRole:
            return self.text(row, col)
        if role == Qt.ToolTipRole:
            if col == 3 and row.advice:
                return pick(row.advice.reason, row.advice.reason_zh)
            return row.file
        if role == Qt.ForegroundRole and col == 3 and row.advice:
            return QColor(FIT_COLORS.get(row.advice.fit, "#888888"))
        if role == Qt.FontRole and col == 0 and self.page.is_recommended(row):
            from PySide6.QtGui import QFont

            font = QFont()
            font.setBold(True)
            return font
        if role == GROUP:  # the heading it is listed under
            if self.page.is_recommended(row):
                return tr("Recommended for this computer")
            return row.model.family if row.model else tr("Local file")
        if role == FIT_ROLE:
            return row.advice.fit if row.advice else ""
        if role == Qt.AccessibleTextRole and col == 0:  # what a screen reader says of the card
            return " · ".join(t for t in (self.text(row, c) for c in range(len(self.HEADERS))) if t)
        if role == Qt.UserRole:  # sort key: the recommended model, then newest generation first, small to large
            if self.page.is_recommended(row):
                return "0"
            if row.model is None:
                return "1"
            return f"2|{9 - row.model.version}|{row.model.family}|{row.model.billions:09.3f}|{row.model.date}"
        return None

    def set_rows(self, rows: list[Row]) -> None:
        self.beginResetModel()
        self.rows = rows
        self.endResetModel()

    def changed(self, r: int) -> None:
        self.dataChanged.emit(self.index(r, 0), self.index(r, self.columnCount() - 1))

    def changed_all(self) -> None:
        if self.rows:
            self.dataChanged.emit(self.index(0, 0), self.index(len(self.rows) - 1, self.columnCount() - 1))


def good_for(row) -> str:
    """What a model is for, in a few words (the first part of its description)."""
    if row.model is None:
        return tr("Your own file")
    text = pick(row.model.description, row.model.description_zh)
    for sep in (";", "；", ":", "："):
        text = text.split(sep)[0]
    return text.strip().rstrip("，,。.")


class Filter(QSortFilterProxyModel):
    def __init__(self, table: CatalogTable):
        super().__init__()
        self.table = table
        self.family = ""
        self.text = ""
        self.setSourceModel(table)

    def filterAcceptsRow(self, source_row, parent):
        row = self.table.rows[source_row]
        fam = row.model.family if row.model else tr("Local file")
        if self.family and fam != self.family:
            return False
        hay = f"{row.name} {row.file} {fam}".lower()
        return all(w in hay for w in self.text.lower().split())

    def update(self, family: str, text: str) -> None:
        self.family, self.text = family, text
        self.invalidate()


class ModelsPage(QWidget):
    """A view of the controller's library: rows from roost.core.library.model_rows, redrawn when the
    controller says the library, a download, the loaded model or the engine's business changed."""

    def __init__(self, ctl):
        super().__init__()
        self.ctl = ctl
        self.jobs = {}  # file name -> Job
        self.partial = {}  # file name -> Pending: a download stopped in an earlier session
        self.show_all = False
        self.table = CatalogTable(self)
        self.proxy = Filter(self.table)
        self._build()
        ctl.jobChanged.connect(self.on_job)
        ctl.modelChanged.connect(self.on_model_changed)
        ctl.busyChanged.connect(self.update_details)
        ctl.catalogChanged.connect(self.set_families)
        ctl.libraryChanged.connect(self.refresh)
        ctl.imported.connect(lambda path: self.select_file(path.name))  # (also when dropped on the window)

    def _build(self) -> None:
        v = QVBoxLayout(self)
        top = QHBoxLayout()
        self.search = QLineEdit(placeholderText=tr("Search models…"), clearButtonEnabled=True,
                                accessibleName=tr("Search models…"))
        self.family = QComboBox(accessibleName=tr("Family"))
        self.family.addItem(tr("All families"), "")
        self.older = QCheckBox(tr("All releases"))
        self.refresh_btn = QPushButton(tr("Refresh list"), clicked=self.refresh_catalog)
        self.import_btn = QPushButton(tr("Import file…"), clicked=self.import_file)
        icons.give(self.refresh_btn, "refresh")
        icons.give(self.import_btn, "file")
        top.addWidget(self.search, 1)
        top.addWidget(self.family)
        top.addWidget(self.older)
        top.addWidget(self.refresh_btn)
        top.addWidget(self.import_btn)
        self.search.textChanged.connect(self._filter)
        self.family.currentIndexChanged.connect(self._filter)
        self.older.toggled.connect(self._toggle_all)

        self.view = model_list(self.proxy, FIT_COLORS)  # a card a model, under its group's heading
        self.proxy.setSortRole(Qt.UserRole)
        self.view.selectionModel().currentRowChanged.connect(lambda *_: self.update_details())

        self.details = QLabel(wordWrap=True)
        self.details.setMinimumHeight(60)
        self.reason = QLabel(wordWrap=True, objectName="hint")
        self.tech_btn = QPushButton(tr("Technical details") + " ▸", checkable=True, flat=True)
        self.tech_btn.toggled.connect(
            lambda on: self.tech_btn.setText(tr("Technical details") + (" ▾" if on else " ▸")))
        self.tech_btn.setAccessibleName(tr("Technical details"))
        self.tech = QWidget(visible=False)  # the strategy and what its words mean
        self.tech_btn.toggled.connect(self.tech.setVisible)
        tv = QVBoxLayout(self.tech)
        tv.setContentsMargins(0, 0, 0, 0)
        self.terms = QLabel(wordWrap=True, objectName="hint")
        strat = QHBoxLayout()
        self.strategy = QComboBox(editable=True, accessibleName=tr("Strategy"))
        self.strategy.addItem(tr("Automatic"), "auto")
        for s in PRESETS:
            self.strategy.addItem(s, s)
        self.strategy.setMinimumWidth(260)
        self.strategy.lineEdit().editingFinished.connect(self._strategy_edited)
        self.strategy.activated.connect(lambda _i: self._strategy_edited())
        strat.addWidget(QLabel(tr("Strategy for this model:")))
        strat.addWidget(self.strategy)
        strat.addStretch(1)
        tv.addLayout(strat)
        tv.addWidget(self.terms)

        buttons = QHBoxLayout()
        self.btn = {}
        for key, label in [("download", "Download"), ("pause", "Pause"), ("resume", "Resume"),
                           ("cancel", "Cancel"), ("delete", "Delete"), ("unload", "Unload"), ("load", "Load")]:
            b = QPushButton(tr(label), clicked=getattr(self, key))
            if key in ("load", "download"):
                b.setObjectName("primary")
            icons.give(b, key, on_accent=key in ("load", "download"))
            self.btn[key] = b
            if key == "unload":
                buttons.addStretch(1)
            buttons.addWidget(b)
        v.addLayout(top)
        v.addWidget(self.view, 1)
        v.addWidget(self.details)
        v.addWidget(self.reason)
        v.addWidget(self.tech_btn, 0, Qt.AlignLeft)
        v.addWidget(self.tech)
        v.addLayout(buttons)
        self.update_details()

    # --- content -------------------------------------------------------------------------------
    def set_families(self, catalog) -> None:
        fams = sorted({m.family for m in catalog})
        self.family.blockSignals(True)
        while self.family.count() > 1:
            self.family.removeItem(1)
        for f in [*fams, tr("Local file")]:
            self.family.addItem(f, f)
        self.family.blockSignals(False)

    def refresh(self) -> None:
        rows, self.partial = self.ctl.model_rows(every_release=self.show_all)
        current = self.current()
        self.table.set_rows(rows)
        self.proxy.sort(0, Qt.AscendingOrder)
        if current is not None:
            self.select_file(current.file)
        elif self.proxy.rowCount():
            self.view.setCurrentIndex(self.proxy.index(0, 0))
        self.update_details()

    def is_recommended(self, row) -> bool:
        rec = self.ctl.recommended()
        return rec is not None and row.model is not None and row.model.id == rec.id

    def _toggle_all(self, on: bool) -> None:
        self.show_all = on
        self.refresh()

    def _filter(self) -> None:
        self.proxy.update(self.family.currentData() or "", self.search.text())

    def current(self) -> Row | None:
        idx = self.view.selectionModel().currentIndex()
        if not idx.isValid():
            return None
        return self.table.rows[self.proxy.mapToSource(idx).row()]

    def select_file(self, file: str) -> None:
        for r, row in enumerate(self.table.rows):
            if row.file == file:
                idx = self.proxy.mapFromSource(self.table.index(r, 0))
                self.view.setCurrentIndex(idx)
                return

    # --- per-row facts -------------------------------------------------------------------------
    def strategy_for(self, row: Row) -> str:
        from roost.core.settings import AUTO

        strategy = self.ctl.settings.current.strategy_for(row.file)
        if strategy != AUTO:
            return strategy
        return row.advice.strategy if row.advice else tr("Automatic")

    def status_text(self, row: Row) -> str:
        from roost.core.download import human_size

        info = self.ctl.info
        if info is not None and row.path is not None and info.path == row.path:
            return tr("loaded")
        job = self.jobs.get(row.file)
        if job is not None and not job.finished:
            p = job.progress
            if job.state == "running" and p is not None and p.total:
                return tr("{pct}% · {speed}/s · {eta} left", pct=int(100 * p.done / p.total),
                          speed=human_size(p.speed), eta=eta_text(p.eta))
            return tr(job.state)
        if job is not None and job.state == "failed":
            return tr("failed")
        if row.path is not None and row.path.exists():
            return tr("damaged") if row.problem else tr("downloaded")
        part = self.partial.get(row.file)
        if part is not None and part.total:
            return f"{tr('paused')} · {int(100 * part.have / part.total)}%"
        if row.model is not None and not row.model.available:
            return tr("removed upstream")
        return tr("not downloaded")

    def update_details(self) -> None:
        row = self.current()
        job = self.jobs.get(row.file) if row else None
        present = bool(row and row.path is not None and row.path.exists())
        active = job is not None and job.state in ("queued", "running")
        paused = job is not None and job.state in ("paused", "failed")
        self.btn["download"].setEnabled(bool(row and row.model and not present and job is None or
                                             (row and row.model and job and job.state in ("cancelled", "done")
                                              and not present)))
        self.btn["pause"].setEnabled(active)
        self.btn["resume"].setEnabled(paused)
        self.btn["cancel"].setEnabled(active or paused)
        self.btn["delete"].setEnabled(present and not (self.ctl.info and self.ctl.info.path == row.path))
        damaged = bool(present and row.problem)
        self.btn["load"].setEnabled(present and not damaged and self.ctl.engine is not None and not self.ctl.generating)
        self.btn["unload"].setEnabled(self.ctl.info is not None and not self.ctl.generating)
        if row is None:
            self.details.setText("")
            self.reason.setText("")
            self.terms.setText("")
            return
        if row.model:
            self.details.setText(f"<b>{row.model.display}</b> · {row.model.file}<br>"
                                 f"{pick(row.model.description, row.model.description_zh)}")
        else:
            self.details.setText(f"<b>{row.path.name}</b>")
        reason = pick(row.advice.reason, row.advice.reason_zh) if row.advice else ""
        expected = pick(*row.advice.expected_speed) if row.advice else ""
        if expected:
            reason = tr("Expected speed on this computer: {speed}.", speed=expected) + " " + reason
        self.reason.setText(reason)
        if job is not None and job.state == "failed" and job.error:
            self.reason.setText(split_bilingual(job.error))
        elif damaged:
            self.reason.setText(split_bilingual(row.problem))
        strategy = self.strategy_for(row)
        self.terms.setText(tr("Runs as “{strategy}”.", strategy=strategy) + "<br>" + "<br>".join(explain_strategy(strategy)))
        override = self.ctl.settings.current.strategy_overrides.get(row.file)
        self.strategy.blockSignals(True)
        if override:
            self.strategy.setEditText(override)
        else:
            self.strategy.setCurrentIndex(0)
        self.strategy.blockSignals(False)

    def _strategy_edited(self) -> None:
        row = self.current()
        if row is None:
            return
        text = self.strategy.currentText().strip()
        from roost.core.settings import SettingsError

        try:
            self.ctl.settings.set_override(row.file, None if text == tr("Automatic") else text)
        except (SettingsError, OSError) as e:
            self.reason.setText(split_bilingual(str(e)))
            return
        self.table.changed_all()
        self.update_details()

    # --- actions -------------------------------------------------------------------------------
    def download(self) -> None:
        row = self.current()
        job = self.ctl.download(row.model) if row and row.model else None
        if job is not None:
            self.jobs[row.file] = job
            self.update_details()

    def pause(self) -> None:
        row = self.current()
        if row and row.file in self.jobs:
            self.ctl.queue.pause(self.jobs[row.file])

    def resume(self) -> None:
        row = self.current()
        if row and row.file in self.jobs:
            self.ctl.queue.resume(self.jobs[row.file])

    def cancel(self) -> None:
        row = self.current()
        if row and row.file in self.jobs:
            self.ctl.queue.cancel(self.jobs[row.file])

    def delete(self) -> None:
        row = self.current()
        if row and row.path and dialogs.confirm(self, tr("Delete"),
                                                tr("Delete {name} from the models folder?", name=row.file)):
            self.ctl.delete_model(row.path)

    def load(self) -> None:
        row = self.current()
        if row and row.path and row.path.exists():
            self.ctl.load_model(row.path)  # with the strategy the settings give this model

    def unload(self) -> None:
        self.ctl.unload_model()

    def import_file(self):
        """Ask for a model file and import it; returns its path in the models folder, or None."""
        path = dialogs.choose_model_file(self)
        return self.import_path(path) if path else None

    def import_path(self, path: str):
        return self.ctl.import_model(path)  # selected when the controller says it was imported

    def refresh_catalog(self) -> None:
        """Ask the Hub which files still exist (in the background; the list redraws when it answers)."""
        self.refresh_btn.setEnabled(False)
        self.ctl.refresh_catalog(on_finished=lambda: self.refresh_btn.setEnabled(True))

    # --- events --------------------------------------------------------------------------------
    def on_job(self, job) -> None:
        self.jobs[job.target.name] = job
        for r, row in enumerate(self.table.rows):
            if row.file == job.target.name:
                self.table.changed(r)
        self.update_details()  # (a finished download re-lists through libraryChanged)  # a failed download's message shows in its row's details, not as a banner

    def on_model_changed(self) -> None:
        self.table.changed_all()
        self.update_details()
