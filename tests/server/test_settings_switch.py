"""The Settings switch serves the model the app has loaded, through the app's own Runtime."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import socket

import openai
import pytest


@pytest.fixture
def win(qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("ROOST_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ROOST_MODELS_DIR", raising=False)
    monkeypatch.setenv("LANG", "en_US.UTF-8")
    from roost.gui.app import create_window
    from roost.gui.worker import EngineThread

    w = create_window(start_engine=False)
    qtbot.addWidget(w)
    w.ctl.attach_engine(EngineThread(w.ctl))
    yield w
    w.ctl.stop_api()
    if w.isVisible():
        w.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_switch_starts_and_stops_the_server_for_the_loaded_model(qtbot, win, make_checkpoint):
    win.ctl.load_model(str(make_checkpoint("v6.0")), "cpu fp32")
    qtbot.waitUntil(lambda: win.ctl.info is not None or win.ctl.error is not None, timeout=60000)
    assert win.ctl.info is not None, win.ctl.error
    page = win.settings_page
    assert page.api_host.text() == "127.0.0.1"
    page.api_port.setValue(free_port())
    page.api_switch.setChecked(True)
    qtbot.waitUntil(lambda: win.ctl.api_server is not None or "Error" in page.api_status.text(), timeout=30000)
    assert win.ctl.api_server is not None, page.api_status.text()
    assert win.ctl.api_server.base_url in page.api_status.text()
    assert win.ctl.api_server.runtime is win.ctl.engine.worker.runtime  # the app's own model, not a copy
    assert not page.api_host.isEnabled()  # settings are fixed while it runs
    client = openai.OpenAI(base_url=win.ctl.api_server.base_url, api_key="x", max_retries=0, timeout=60)
    assert [m.id for m in client.models.list().data] == [win.ctl.info.path.stem]
    r = client.chat.completions.create(model=win.ctl.info.path.stem, max_tokens=3,
                                       messages=[{"role": "user", "content": "Hi"}])
    assert r.usage.completion_tokens >= 1
    server = win.ctl.api_server
    page.api_switch.setChecked(False)
    qtbot.waitUntil(lambda: page.api_status.text() == "Stopped." and not server.running, timeout=30000)
    assert page.api_host.isEnabled()
    with pytest.raises(openai.APIConnectionError):
        client.models.list()


def test_the_switch_refuses_other_interfaces_without_a_key(qtbot, win):
    page = win.settings_page
    page.api_host.setText("0.0.0.0")
    page.api_key.setText("")
    page.api_switch.setChecked(True)
    assert not page.api_switch.isChecked() and win.ctl.api_server is None
    assert "API key" in page.api_status.text()
