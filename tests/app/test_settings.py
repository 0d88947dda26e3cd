"""Typed settings: one file, validated values, kept unknown keys, a damaged file survived; and the
settings reach the commands that use them."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile

import pytest

from roost.core.settings import AUTO, Settings, SettingsError, SettingsStore, apply_proxy
from tests.hubserver import HubServer
from tests.proxyserver import ProxyServer


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ROOST_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ROOST_MODELS_DIR", raising=False)
    return tmp_path / "home"


def test_defaults_changes_and_what_is_written(home):
    store = SettingsStore()
    assert store.current == Settings() and store.notice is None and not store.path.exists()
    seen = []
    store.subscribe(lambda old, new: seen.append((old.theme, new.theme)))
    store.update(theme="dark", proxy="127.0.0.1:7890", default_strategy="cpu int8")
    assert seen == [("system", "dark")]
    again = SettingsStore().current
    assert again.theme == "dark" and again.proxy == "http://127.0.0.1:7890" and again.default_strategy == "cpu int8"
    assert not list(home.glob("*.tmp"))  # written whole, then renamed
    store.update(theme="dark")
    assert len(seen) == 1  # no change, no announcement


@pytest.mark.parametrize("key, value, allowed", [
    ("theme", "purple", "system, light, dark"),
    ("source", "ftp", "hf, mirror, modelscope"),
    ("language", "fr", "en, zh"),
    ("api_port", 70000, "1 to 65535"),
    ("proxy", "ftp://host", "http://127.0.0.1:7890"),
    ("default_strategy", "warp9", "'cpu int8'"),
    ("sampling", {"top_p": 3}, "top_p must be between 0 and 1"),
    ("api_allow_origins", "https://chat.example.org/page", "scheme and host, no path"),
    ("send_key", "space", "Allowed: enter, ctrl"),
    ("state_budget_mb", -5, "from 0 (keep no saved states)"),
    ("state_budget_mb", "lots", "from 0 (keep no saved states)"),
    ("weight_cache_mb", -1, "from 0 (keep no converted weights)"),
    ("threads", -2, "0 (automatic: the physical cores other programs leave free)"),
    ("threads", "many", "or a number of threads from 1 to 1024"),
    ("nonsense", 1, "Settings:"),
])
def test_a_bad_value_is_refused_with_the_allowed_ones_and_changes_nothing(home, key, value, allowed):
    store = SettingsStore()
    store.update(theme="light")
    with pytest.raises(SettingsError, match=allowed.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        store.update(**{key: value})
    assert store.current.theme == "light" and SettingsStore().current == store.current


def test_allowed_web_origins_are_kept_as_a_list(home):
    store = SettingsStore()
    store.update(api_allow_origins=" https://chat.example.org/, null ,")
    assert SettingsStore().current.api_allow_origins == ("https://chat.example.org", "null")


def test_a_damaged_file_gives_defaults_a_notice_and_a_kept_copy(home):
    home.mkdir(parents=True)
    (home / "settings.json").write_text('{"theme": "dark", "proxy": ')  # cut mid-write by another program
    store = SettingsStore()
    assert store.current == Settings()
    assert "damaged" in store.notice and "默认设置" in store.notice
    (backup,) = home.glob("settings.json.unreadable-*")
    assert backup.read_text() == '{"theme": "dark", "proxy": '
    assert backup.name in store.notice
    store.update(theme="light")  # and the app goes on saving normally
    assert SettingsStore().current.theme == "light" and SettingsStore().notice is None


def test_bad_values_fall_back_alone_and_unknown_keys_are_kept(home):
    home.mkdir(parents=True)
    (home / "settings.json").write_text(json.dumps({"theme": "purple", "proxy": "http://p:1", "api_port": "x",
                                                    "from_a_newer_roost": {"a": 1}}))
    store = SettingsStore()
    assert store.current.theme == "system" and store.current.proxy == "http://p:1" and store.current.api_port == 8000
    assert "theme" in store.notice and "api_port" in store.notice
    store.update(language="zh")
    saved = json.loads((home / "settings.json").read_text())
    assert saved["from_a_newer_roost"] == {"a": 1} and saved["language"] == "zh"


def test_the_strategy_rule_and_overrides(home):
    store = SettingsStore()
    assert store.current.strategy_for("a.pth") == AUTO
    store.update(default_strategy="cpu bf16")
    store.set_override("/models/a.pth", "cpu int8")
    assert store.current.strategy_for("a.pth") == "cpu int8" and store.current.strategy_for("b.pth") == "cpu bf16"
    assert store.current.strategy_for("a.pth", "cpu fp32") == "cpu fp32"
    store.set_override("a.pth", "auto")
    assert store.current.strategy_for("a.pth") == "cpu bf16"


def test_the_proxy_setting_leaves_the_systems_own_alone(monkeypatch):
    import roost.core.settings as st

    monkeypatch.setattr(st, "_SYSTEM_PROXY", None)
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://corporate:3128")
    apply_proxy("")
    assert os.environ["HTTPS_PROXY"] == "http://corporate:3128"  # nothing saved: the system's stays
    apply_proxy("http://127.0.0.1:7890")
    assert os.environ["HTTPS_PROXY"] == os.environ["http_proxy"] == "http://127.0.0.1:7890"
    apply_proxy("")
    assert os.environ["HTTPS_PROXY"] == "http://corporate:3128" and "http_proxy" not in os.environ


# --- the command line -------------------------------------------------------------------------------
def roost(*args, home, env=None):
    full = {**os.environ, "ROOST_HOME": str(home), **(env or {})}
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY",
                "all_proxy", "HF_ENDPOINT", "HF_TOKEN"):
        if var not in (env or {}):
            full.pop(var, None)
    return subprocess.run([sys.executable, "-m", "roost", *args], capture_output=True, text=True,
                          cwd=tempfile.gettempdir(), env=full, timeout=300)


def test_roost_settings_shows_and_sets(home):
    r = roost("settings", "set", "proxy", "http://127.0.0.1:7890", home=home)
    assert r.returncode == 0, r.stderr
    r = roost("settings", "set", "hf_token", "hf_secret", home=home)
    r = roost("settings", "set", "sampling.temperature", "0.7", home=home)
    assert r.returncode == 0, r.stderr
    r = roost("settings", home=home)
    assert r.returncode == 0
    assert "http://127.0.0.1:7890" in r.stdout and "hf_secret" not in r.stdout and "(set)" in r.stdout
    assert re.search(r"^sampling\.temperature +0\.7$", r.stdout, re.M), r.stdout
    r = roost("settings", "set", "theme", "purple", home=home)
    assert r.returncode == 2 and "Allowed: system, light, dark" in r.stderr and "Traceback" not in r.stderr
    r = roost("settings", "--json", home=home)
    assert json.loads(r.stdout)["hf_token"] == "(set)"


def test_a_damaged_settings_file_is_said_once_by_the_command_line(home):
    home.mkdir(parents=True)
    (home / "settings.json").write_bytes(b"\xff\xfe garbage")
    r = roost("settings", home=home)
    assert r.returncode == 0 and "settings file was damaged" in r.stderr
    r = roost("settings", home=home)
    assert "damaged" not in r.stderr


def test_roost_download_goes_through_the_saved_proxy_into_the_saved_folder(home, tmp_path):
    data = os.urandom(300_000)
    hub = HubServer()
    hub.add("BlinkDL/test-models", "tiny.pth", data)
    hub.start()
    proxy = ProxyServer().start()
    try:
        folder = tmp_path / "chosen"
        for key, value in (("proxy", proxy.url), ("models_dir", str(folder)), ("source", "hf")):
            assert roost("settings", "set", key, value, home=home).returncode == 0
        r = roost("download", "BlinkDL/test-models/tiny.pth", "--endpoint", hub.hub_url, home=home)
        assert r.returncode == 0, r.stderr
    finally:
        proxy.stop()
        hub.stop()
    assert hashlib.sha256((folder / "tiny.pth").read_bytes()).digest() == hashlib.sha256(data).digest()
    through = " ".join(proxy.requests)
    assert hub.hub_url in through and hub.cdn_url in through, proxy.requests  # metadata and bytes alike


def test_a_one_off_read_leaves_a_damaged_file_for_the_store_that_says_so(home):
    from roost.core.settings import load_settings

    home.mkdir(parents=True)
    (home / "settings.json").write_text("{broken")
    assert load_settings() == Settings()  # e.g. paths.models_dir() deep inside a command
    assert (home / "settings.json").exists() and not list(home.glob("settings.json.unreadable-*"))
    store = SettingsStore()  # the app's or the command's own: moves it aside and says so
    assert store.notice and len(list(home.glob("settings.json.unreadable-*"))) == 1


def test_programs_keep_converted_weights_in_the_cache_folder_within_the_budget(home):
    store = SettingsStore()
    options = store.current.load_options()
    assert options.weight_cache == str(home / "cache" / "weights") and options.weight_cache_bytes == 16384 << 20
    store.update(weight_cache_mb=0)
    assert store.current.load_options().weight_cache is None


def test_the_threads_setting_and_flag_set_the_models_threads(home):
    """`threads` 0 (the default) chooses automatically; a number fixes it; --threads wins over the
    setting; `roost settings` says what 0 means."""
    import argparse

    import torch

    from roost.cli import _use_threads
    from roost.engine import threads

    before = torch.get_num_threads()
    try:
        assert SettingsStore().current.threads == 0
        _use_threads(argparse.Namespace(threads=None))
        assert threads.automatic()
        SettingsStore().update(threads="1")
        _use_threads(argparse.Namespace(threads=None))
        assert not threads.automatic() and torch.get_num_threads() == 1
        _use_threads(argparse.Namespace(threads=2))
        assert not threads.automatic() and torch.get_num_threads() == 2
        with pytest.raises(SystemExit, match="--threads"):
            _use_threads(argparse.Namespace(threads=-1))
    finally:
        threads.configure(before)
    out = roost("settings", home=home).stdout
    assert [line.split() for line in out.splitlines() if line.startswith("threads ")] == [["threads", "1"]]
    SettingsStore().update(threads=0)
    out = roost("settings", home=home).stdout
    assert "threads" in out and "0 (automatic: the physical cores other programs leave free)" in out
