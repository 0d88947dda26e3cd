"""The user's settings: one typed, frozen value, one file, one place that answers each question.

    store = SettingsStore()                  # reads <data folder>/settings.json
    store.current.source                     # a Settings value; never a dict
    store.update(proxy="http://127.0.0.1:7890")   # validated, written atomically, listeners told
    store.current.strategy_for("model.pth")  # the strategy rule (see Settings.strategy_for)

Used alike by the desktop app, the command line (`roost settings`, `roost download`, ...) and the API
server. The file is JSON; keys this version does not know are kept and written back untouched. A file
that cannot be read is moved aside (kept as ``settings.json.unreadable-<time>``) and Roost starts
from the defaults, saying so once (`SettingsStore.notice`); a value that is not valid falls back to
its default alone, also with a notice.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlsplit

from roost.engine.sampling import KNOBS  # (torch-free at import: the app reads settings before its window)

AUTO = "auto"
THEMES = ("system", "light", "dark")
SEND_KEYS = ("enter", "ctrl+enter")
LANGUAGES = ("", "en", "zh")  # "": the system's language
SAMPLING_KEYS = (*KNOBS, "max_tokens")  # what Settings.sampling may change
PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")


class SettingsError(ValueError):
    """A value that a setting cannot take; the message says which values it can."""


def _frozen(mapping: Mapping | None) -> Mapping:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Settings:
    models_dir: str = ""  # "": the default (a portable pack's models/ folder, else the per-user one)
    source: str = ""  # "": the one suggested for this computer; else hf | mirror | modelscope
    hf_token: str = ""
    proxy: str = ""  # "": the system's proxy variables, if any
    language: str = ""  # "": the system's; en | zh
    theme: str = "system"
    send_key: str = "enter"  # the chat's composer: "enter" sends (Shift+Enter: new line), or "ctrl+enter"
    default_strategy: str = AUTO
    strategy_overrides: Mapping[str, str] = field(default_factory=lambda: _frozen({}))  # model file name -> strategy
    sampling: Mapping[str, float] = field(default_factory=lambda: _frozen({}))  # changed defaults only
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_key: str = ""
    api_allow_origins: tuple[str, ...] = ()  # web origins that may call the API besides local pages and apps
    state_budget_mb: int = 2048  # disk space for chats' saved states (roost.core.saved_states); 0: none kept
    weight_cache_mb: int = 16384  # disk space for converted int8/int4 weights (roost.engine.weight_cache); 0: none
    threads: int = 0  # CPU threads for the model; 0: automatic (the physical cores other programs leave free)
    last_model: str = ""  # the app reloads it on start
    geometry: str = ""  # the window's, as Qt saves it
    extra: Mapping[str, object] = field(default_factory=lambda: _frozen({}), compare=False)  # unknown keys

    # --- the questions every part of Roost asks -------------------------------------------------
    def load_options(self):
        """The engine's LoadOptions for a program that owns its process: the ``ROOST_*`` switches,
        and converted int8/int4 weights kept in the user's cache folder within ``weight_cache_mb``."""
        from roost.core.paths import weights_cache_dir
        from roost.engine.options import LoadOptions

        return LoadOptions.from_env(weight_cache=str(weights_cache_dir()) if self.weight_cache_mb > 0 else None,
                                    weight_cache_bytes=self.weight_cache_mb << 20)

    def strategy_for(self, model_file: str | os.PathLike, asked: str | None = None) -> str:
        """The strategy to load `model_file` with: `asked` (a --strategy flag, a choice in the app),
        else the model's saved override, else the default, else "auto" (the advisor decides)."""
        if asked is not None and str(asked).strip():
            return str(asked).strip()
        override = self.strategy_overrides.get(Path(model_file).name, "")
        for value in (override, self.default_strategy):
            if value and value.strip():
                return value.strip()
        return AUTO

    def download_source(self) -> str:
        from roost.core.sources import suggested_source

        return self.source or suggested_source()

    def token(self) -> str | None:
        """The Hub token: $HF_TOKEN wins (as with huggingface_hub), else the saved one."""
        return os.environ.get("HF_TOKEN") or self.hf_token or None

    def models_folder(self) -> Path:
        """The models folder in force: $ROOST_MODELS_DIR, the saved choice, a portable pack's, or
        the per-user default (not created here)."""
        from roost.core.paths import data_dir, portable_models_dir

        chosen = os.environ.get("ROOST_MODELS_DIR") or self.models_dir
        return Path(chosen).expanduser() if chosen else (portable_models_dir() or data_dir() / "models")

    # --- changes ---------------------------------------------------------------------------------
    def replace(self, **changes) -> Settings:
        """A copy with `changes`, each validated (SettingsError names the allowed values)."""
        clean = {}
        for key, value in changes.items():
            if key not in _FIELDS or key == "extra":
                raise SettingsError(f"There is no setting '{key}'. Settings: {', '.join(EDITABLE)}.\n"
                                    f"没有名为“{key}”的设置。")
            clean[key] = _validate(key, value)
        return replace(self, **clean)

    def to_json(self) -> dict:
        out = dict(self.extra)
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            out[f.name] = dict(value) if isinstance(value, Mapping) else list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_json(cls, data: Mapping) -> tuple[Settings, list[str]]:
        """Settings from a parsed file, and the keys whose values were not valid (defaults used)."""
        values, bad = {}, []
        for key, value in data.items():
            if key in _FIELDS and key != "extra":
                try:
                    values[key] = _validate(key, value, checking_folder=False)
                except SettingsError:
                    bad.append(key)
        extra = {k: v for k, v in data.items() if k not in _FIELDS}
        return cls(**values, extra=_frozen(extra)), bad


_FIELDS = {f.name for f in fields(Settings)}
# what `roost settings set` may change (the rest is the app's own bookkeeping)
EDITABLE = ("models_dir", "source", "hf_token", "proxy", "language", "theme", "send_key", "default_strategy",
            "api_host", "api_port", "api_key", "api_allow_origins", "state_budget_mb",
            "weight_cache_mb", "threads",
            *(f"sampling.{k}" for k in SAMPLING_KEYS))
SECRET = ("hf_token", "api_key")


def _validate(key: str, value, *, checking_folder: bool = True):
    """`value` as setting `key` holds it, or SettingsError with the allowed values."""
    from roost.core.sources import SOURCES

    def text() -> str:
        if value is None:
            return ""
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise SettingsError(f"{key} takes text, not {type(value).__name__}.\n{key} 需要文本。")
        return str(value).strip()

    def one_of(allowed, shown=None, shown_zh=None) -> str:
        v = text()
        if v not in allowed:
            names = ", ".join(a or '""' for a in allowed)
            raise SettingsError(f"{key} cannot be '{v}'. Allowed: {shown or names}.\n"
                                f"{key} 不能是“{v}”。可选：{shown_zh or names}。")
        return v

    if key == "source":
        return one_of(("", *SOURCES), "hf, mirror, modelscope, or \"\" (the one suggested for this computer)",
                      "hf、mirror、modelscope，或 \"\"（按本机推荐）")
    if key == "theme":
        return one_of(THEMES)
    if key == "send_key":
        return one_of(SEND_KEYS)
    if key == "language":
        return one_of(LANGUAGES, "en, zh, or \"\" (the system's)", "en、zh，或 \"\"（跟随系统）")
    if key == "proxy":
        v = text()
        if v:
            parts = urlsplit(v if "://" in v else "http://" + v)
            if parts.scheme not in PROXY_SCHEMES or not parts.hostname:
                raise SettingsError(f"proxy cannot be '{v}'. Give a URL such as http://127.0.0.1:7890 "
                                    f"(schemes: {', '.join(PROXY_SCHEMES)}), or \"\" for none.\n"
                                    f"代理地址无效，例如 http://127.0.0.1:7890；留空表示不用代理。")
            v = v if "://" in v else "http://" + v
        return v
    if key == "default_strategy":
        v = text() or AUTO
        return v if v.lower() == AUTO else _strategy(key, v)
    if key == "strategy_overrides":
        if not isinstance(value, Mapping):
            raise SettingsError("strategy_overrides is a mapping of model file names to strategies.")
        return _frozen({str(k): _strategy(key, str(v)) for k, v in value.items() if v})
    if key == "sampling":
        if not isinstance(value, Mapping):
            raise SettingsError("sampling is a mapping of sampling settings.")
        values = {k: v for k, v in value.items() if k in SAMPLING_KEYS}
        try:
            from roost.engine.sampling import SamplingParams

            SamplingParams(**values)
        except (TypeError, ValueError) as e:
            raise SettingsError(f"sampling: {e}.\n采样设置无效：{e}。") from None
        return _frozen(values)
    if key == "api_port":
        try:
            port = int(value)
        except (TypeError, ValueError):
            port = -1
        if isinstance(value, bool) or not 1 <= port <= 65535:
            raise SettingsError(f"api_port cannot be '{value}'. Allowed: a number from 1 to 65535.\n"
                                f"api_port 必须是 1 到 65535 之间的数字。")
        return port
    if key in ("state_budget_mb", "weight_cache_mb"):
        try:
            mb = int(value)
        except (TypeError, ValueError):
            mb = -1
        if isinstance(value, bool) or not 0 <= mb <= 1 << 20:
            what, what_zh = (("keep no saved states", "不保存状态") if key == "state_budget_mb" else
                             ("keep no converted weights", "不保存转换后的权重"))
            raise SettingsError(f"{key} cannot be '{value}'. Allowed: a number of megabytes from 0 "
                                f"({what}) to 1048576.\n"
                                f"{key} 必须是 0（{what_zh}）到 1048576 之间的兆字节数。")
        return mb
    if key == "threads":
        try:
            n = int(value)
        except (TypeError, ValueError):
            n = -1
        if isinstance(value, bool) or not 0 <= n <= 1024:
            raise SettingsError(f"threads cannot be '{value}'. Allowed: 0 (automatic: the physical cores other "
                                f"programs leave free) or a number of threads from 1 to 1024.\n"
                                f"threads 必须是 0（自动：其他程序空出的物理核心数）或 1 到 1024 之间的线程数。")
        return n
    if key == "api_allow_origins":
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise SettingsError("api_allow_origins is a list of web origins such as https://chat.example.org.")
        out = []
        for item in items:
            origin = str(item).strip().rstrip("/")
            if not origin:
                continue
            parts = urlsplit(origin)
            if origin != "null" and not (parts.scheme and parts.netloc and not parts.path):
                raise SettingsError(f"api_allow_origins cannot hold '{origin}'. Give origins such as "
                                    "https://chat.example.org or http://192.168.1.5:3000 (scheme and host, no "
                                    "path), or null, separated by commas.\n"
                                    f"“{origin}”不是有效的来源，例如 https://chat.example.org（只写协议和主机，不带路径），用逗号分隔。")
            out.append(origin)
        return tuple(out)
    if key == "api_host":
        v = text()
        if not v:
            raise SettingsError("api_host cannot be empty. Use 127.0.0.1 (this computer only).\n"
                                "api_host 不能为空，请使用 127.0.0.1（仅本机）。")
        return v
    if key == "models_dir":
        v = text()
        if v and checking_folder:
            _writable_folder(Path(v).expanduser())
            v = str(Path(v).expanduser().resolve())
        return v
    return text()  # hf_token, api_key, last_model, geometry


def _strategy(key: str, value: str) -> str:
    from roost.engine.errors import StrategyError
    from roost.engine.strategy import parse_strategy

    try:
        parse_strategy(value)
    except StrategyError as e:
        raise SettingsError(f"{key} cannot be '{value}': {str(e).splitlines()[0]} Use 'auto' or a strategy "
                            f"such as 'cpu int8', 'cpu bf16', 'cuda fp16'.\n{key} 无效，请用 auto 或例如 "
                            f"'cpu int8'。") from None
    return value


def _writable_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".roost-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise SettingsError(f"Roost cannot write to {folder} ({e.strerror or e}). Choose a folder you can "
                            f"write to.\nRoost 无法写入 {folder}，请选择可写的文件夹。") from None


class SettingsStore:
    """The settings file, read once, and every change to it: validated, saved atomically (unknown
    keys kept), then announced to the listeners as (old, new). Thread-safe."""

    def __init__(self, path: str | os.PathLike | None = None, *, repair: bool = True):
        """`repair=False`: only read (a damaged file is left where it is, for a store that says so)."""
        from roost.core.paths import settings_file

        self.path = Path(path) if path is not None else settings_file()
        self._repair = repair
        self.notice: str | None = None  # said once to the user: the file was unreadable, or values bad
        self._lock = threading.RLock()
        self._listeners: list[Callable[[Settings, Settings], None]] = []
        self.current = self._read()

    def subscribe(self, fn: Callable[[Settings, Settings], None]) -> None:
        self._listeners.append(fn)

    def update(self, **changes) -> Settings:
        """Validate and apply `changes`; returns the new settings. Raises SettingsError (nothing
        changed) or OSError when the file cannot be written."""
        with self._lock:
            old = self.current
            new = old.replace(**changes)
            if new == old and new.extra == old.extra:
                return old
            self._write(new)
            self.current = new
        for fn in list(self._listeners):
            fn(old, new)
        return new

    def set_override(self, model_file: str | os.PathLike, strategy: str | None) -> Settings:
        """Remember (or, with None/"auto"/"", forget) the strategy of one model file."""
        name = Path(model_file).name
        overrides = dict(self.current.strategy_overrides)
        if strategy and strategy.strip() and strategy.strip().lower() != AUTO:
            overrides[name] = strategy.strip()
        else:
            overrides.pop(name, None)
        return self.update(strategy_overrides=overrides)

    # --- the file --------------------------------------------------------------------------------
    def _read(self) -> Settings:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return Settings()
        except OSError as e:
            self.notice = (f"Roost could not read its settings ({e.strerror or e}) and uses the defaults for now.\n"
                           f"无法读取设置文件，暂时使用默认设置。")
            return Settings()
        try:
            data = json.loads(raw.decode("utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except (UnicodeDecodeError, ValueError):
            if not self._repair:
                return Settings()
            backup = self.path.with_name(f"{self.path.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
            try:
                os.replace(self.path, backup)
                kept = f" The old file was kept as {backup}."
                kept_zh = f"原文件已保存为 {backup}。"
            except OSError:
                kept, kept_zh = "", ""
            self.notice = (f"Roost's settings file was damaged, so Roost started with the default settings.{kept}\n"
                           f"设置文件已损坏，Roost 已使用默认设置启动。{kept_zh}")
            return Settings()
        settings, bad = Settings.from_json(data)
        if bad:
            self.notice = (f"Some settings had values Roost cannot use and were reset to their defaults: "
                           f"{', '.join(bad)}.\n部分设置的值无效，已恢复默认：{', '.join(bad)}。")
        return settings

    def _write(self, settings: Settings) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(settings.to_json(), indent=1, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, self.path)


def load_settings() -> Settings:
    """The saved settings, read now (for one-off readers; a long-lived program keeps a SettingsStore).
    A damaged file gives the defaults and stays in place: the app or command that owns the store
    moves it aside and tells the user."""
    return SettingsStore(repair=False).current


# --- the proxy ------------------------------------------------------------------------------------
_PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")
_SYSTEM_PROXY: dict[str, str | None] | None = None


def apply_proxy(proxy: str) -> None:
    """Route this process's downloads through `proxy` (urllib and huggingface_hub both read the
    standard variables); "" restores whatever the system had set before."""
    global _SYSTEM_PROXY
    if _SYSTEM_PROXY is None:
        _SYSTEM_PROXY = {v: os.environ.get(v) for v in _PROXY_VARS}
    for var in _PROXY_VARS:
        value = proxy or _SYSTEM_PROXY[var]
        if value:
            os.environ[var] = value
        else:
            os.environ.pop(var, None)


def describe(settings: Settings) -> list[tuple[str, str]]:
    """(key, shown value) for `roost settings`, secrets masked and defaults explained."""
    rows = []
    for key in EDITABLE:
        if key.startswith("sampling."):
            name = key.split(".", 1)[1]
            from roost.engine.sampling import SamplingParams

            value = settings.sampling.get(name)
            rows.append((key, f"{value}" if value is not None else f"{getattr(SamplingParams(), name)} (default)"))
            continue
        value = getattr(settings, key)
        if key in SECRET:
            shown = "(set)" if value else "(none)"
        elif key == "models_dir":
            shown = value or f"{settings.models_folder()} (default)"
        elif key == "source":
            shown = value or f"{settings.download_source()} (suggested for this computer)"
        elif key == "proxy":
            shown = value or "(none: the system's, if any)"
        elif key == "language":
            shown = value or "(the system's)"
        elif key == "api_allow_origins":
            shown = ", ".join(value) or "(none: pages of this computer, desktop apps and browser extensions only)"
        elif key == "threads":
            shown = str(value) if value else "0 (automatic: the physical cores other programs leave free)"
        else:
            shown = str(value)
        rows.append((key, shown))
    for name, strategy in sorted(settings.strategy_overrides.items()):
        rows.append((f"strategy for {name}", strategy))
    return rows


def set_from_text(store: SettingsStore, key: str, value: str) -> Settings:
    """`roost settings set KEY VALUE`: sampling.NAME numbers, everything else as text."""
    if key.startswith("sampling."):
        name = key.split(".", 1)[1]
        if name not in SAMPLING_KEYS:
            raise SettingsError(f"There is no sampling setting '{name}'. Sampling settings: "
                                f"{', '.join(SAMPLING_KEYS)}.\n没有名为“{name}”的采样设置。")
        sampling = dict(store.current.sampling)
        if value.strip() in ("", "default"):
            sampling.pop(name, None)
        else:
            try:
                number = float(value)
                sampling[name] = int(number) if name in ("top_k", "max_tokens") else number
            except ValueError:
                raise SettingsError(f"{key} takes a number, not '{value}'.\n{key} 需要一个数字。") from None
        return store.update(sampling=sampling)
    if key not in EDITABLE:
        raise SettingsError(f"There is no setting '{key}' that can be changed here. Settings: {', '.join(EDITABLE)}."
                            f"\n没有可在此修改的设置“{key}”。")
    return store.update(**{key: value})


