"""The Models page's list: each model as a card (name, what it is good for, size, how it runs on
this computer, its status), under a heading for its group: the recommended model first, then each
family, newest generation first. The rows and their order are the page's `CatalogTable` through
its sort/filter proxy; this draws them."""

from __future__ import annotations

from PySide6.QtCore import QRect, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFont, QFontMetrics, QPainter, QPalette
from PySide6.QtWidgets import QAbstractItemView, QFrame, QListView, QStyle, QStyledItemDelegate

from roost.gui.i18n import tr

GROUP = Qt.UserRole + 1  # a row's group heading (CatalogTable.data)
FIT_ROLE = Qt.UserRole + 2  # its fit ("fast", "comfortable", ..., or "")
COLUMNS = {"name": 0, "good_for": 1, "size": 2, "fit": 3, "status": 4}


class ModelCard(QStyledItemDelegate):
    PAD = 10
    GAP = 6  # between cards

    def __init__(self, view, colours: dict[str, str]):
        super().__init__(view)
        self.colours = colours  # fit -> its colour

    @staticmethod
    def starts_group(index) -> bool:
        """Whether this row is the first of its group (a heading is drawn above it)."""
        if index.row() == 0:
            return True
        above = index.sibling(index.row() - 1, 0)
        return above.data(GROUP) != index.data(GROUP)

    def heading_height(self, option) -> int:
        return option.fontMetrics.height() + 18

    def sizeHint(self, option, index) -> QSize:
        fm = option.fontMetrics
        height = 2 * fm.height() + 2 * self.PAD + 4 + self.GAP
        if self.starts_group(index):
            height += self.heading_height(option)
        return QSize(200, height)

    def paint(self, painter, option, index) -> None:
        painter.save()
        painter.setRenderHint(QPainter.Antialiasing)
        pal, fm = option.palette, option.fontMetrics
        rect = QRect(option.rect)
        if self.starts_group(index):
            head = QRect(rect.left() + 4, rect.top(), rect.width() - 8, self.heading_height(option))
            font = QFont(option.font)
            font.setBold(True)
            painter.setFont(font)
            painter.setPen(pal.color(QPalette.PlaceholderText))
            painter.drawText(head.adjusted(0, 8, 0, 0), Qt.AlignLeft | Qt.AlignVCenter, index.data(GROUP) or "")
            rect.setTop(head.bottom() + 1)
        card = QRectF(rect.adjusted(2, 0, -2, -self.GAP))
        selected = bool(option.state & QStyle.State_Selected)
        accent = pal.color(QPalette.Highlight)
        dark = pal.color(QPalette.Window).lightness() < 128
        fill = QColor(pal.color(QPalette.AlternateBase if dark else QPalette.Base))
        if selected or option.state & QStyle.State_MouseOver:
            tint = QColor(accent)
            tint.setAlpha(45 if selected else 18)
            painter.setBrush(fill)
            painter.setPen(Qt.NoPen)
            painter.drawRoundedRect(card, 8, 8)
            fill = tint
        painter.setBrush(fill)
        border = QColor(accent if selected else pal.color(QPalette.Text))
        if not selected:
            border.setAlpha(40)
        painter.setPen(border)
        painter.drawRoundedRect(card.adjusted(0.5, 0.5, -0.5, -0.5), 8, 8)

        inner = card.toRect().adjusted(self.PAD + 2, self.PAD, -self.PAD - 2, -self.PAD)
        line = fm.height()
        col = lambda name: index.sibling(index.row(), COLUMNS[name]).data(Qt.DisplayRole) or ""  # noqa: E731
        text, muted = pal.color(QPalette.Text), pal.color(QPalette.PlaceholderText)

        # the right side: the fit as a tinted label, the status under it
        fit, fit_text = index.data(FIT_ROLE) or "", col("fit")
        right = 0
        if fit_text:
            bold = QFont(option.font)
            bold.setBold(True)
            width = QFontMetrics(bold).horizontalAdvance(fit_text) + 16
            pill = QRectF(inner.right() - width, inner.top() - 1, width, line + 2)
            colour = QColor(self.colours.get(fit, "#888888"))
            tint = QColor(colour)
            tint.setAlpha(38)
            painter.setPen(Qt.NoPen)
            painter.setBrush(tint)
            painter.drawRoundedRect(pill, (line + 2) / 2, (line + 2) / 2)
            painter.setFont(bold)
            painter.setPen(colour)
            painter.drawText(pill, Qt.AlignCenter, fit_text)
            right = width
        status = col("status")
        status_width = fm.horizontalAdvance(status)
        painter.setFont(option.font)
        painter.setPen(muted)
        painter.drawText(QRect(inner.right() - status_width, inner.top() + line + 4, status_width, line),
                         Qt.AlignRight | Qt.AlignVCenter, status)

        # the left side: the name, then what it is good for and its size
        name_font = QFont(option.font)
        name_font.setBold(True)
        painter.setFont(name_font)
        painter.setPen(text)
        name_width = inner.width() - right - 12
        name = QFontMetrics(name_font).elidedText(col("name"), Qt.ElideRight, name_width)
        painter.drawText(QRect(inner.left(), inner.top(), name_width, line), Qt.AlignLeft | Qt.AlignVCenter, name)
        painter.setFont(option.font)
        painter.setPen(muted)
        about_width = inner.width() - status_width - 16
        about = fm.elidedText(f"{col('good_for')} · {col('size')}", Qt.ElideRight, about_width)
        painter.drawText(QRect(inner.left(), inner.top() + line + 4, about_width, line),
                         Qt.AlignLeft | Qt.AlignVCenter, about)
        painter.restore()


def model_list(model, colours: dict[str, str]) -> QListView:
    """The list of models as cards, over `model` (the page's sort/filter proxy)."""
    view = QListView(accessibleName=tr("Models"))
    view.setModel(model)
    view.setItemDelegate(ModelCard(view, colours))
    view.setSelectionMode(QAbstractItemView.SingleSelection)
    view.setVerticalScrollMode(QAbstractItemView.ScrollPerPixel)
    view.setMouseTracking(True)  # (the card under the mouse is lit)
    view.setObjectName("modelList")
    view.setFrameShape(QFrame.NoFrame)  # the cards on the window's own background
    view.viewport().setAutoFillBackground(False)
    return view
