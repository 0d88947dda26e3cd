"""The ``roost`` command.

    roost                       the desktop app
    roost generate --model PATH "prompt"
    roost chat --model PATH
    roost doctor [--json]       what this machine has
    roost models [--all]        the catalog with what fits this machine
    roost download NAME         download a model into the models folder
    roost selfcheck             check this installation; exit code 0 when it works
    roost serve --model PATH    an OpenAI-compatible API on http://127.0.0.1:8000/v1
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from roost import __version__


# what the engine's finish reasons mean, in words a user reads
FINISHED = {
    "stop": "finished / 已完成",
    "length": "reached the token limit (--max-tokens) / 已达到长度上限",
    "cancelled": "stopped / 已停止",
}
BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a command whose reader went away


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        from roost.gui.app import run

        return run()
    from roost.core.logs import setup_logging
    from roost.engine.errors import RoostError

    log_path = setup_logging()
    if log_path is None:  # nowhere to write details: keep them off the terminal all the same
        logging.getLogger().addHandler(logging.NullHandler())
    _say_unfinished_loads(log_path)
    try:
        return args.func(args)
    except RoostError as e:
        print(f"roost: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nStopped. / 已停止。", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader of our output went away (`roost models | head`): not an error worth a word;
        # point stdout at nothing so that the interpreter's final flush cannot fail again
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return BROKEN_PIPE
    except Exception as e:  # noqa: BLE001 -- a bug of ours: one line for the user, the traceback to the log
        logging.getLogger("roost.cli").exception("roost %s failed", args.command)
        where = f" Details are in {log_path}." if log_path else ""
        where_zh = f"详情见 {log_path}。" if log_path else ""
        first = (str(e).splitlines() or [""])[0][:200]
        print(f"roost: {args.command} failed unexpectedly ({type(e).__name__}: {first}).{where} Please report it.\n"
              f"roost：{args.command} 意外失败。{where_zh}", file=sys.stderr)
        return 1


STRATEGY_HELP = ("e.g. 'cpu int8', 'cpu bf16', 'cuda fp16', or 'auto'. Default: the model's strategy saved in "
                 "the app, else the app's default, else auto (the best for this computer, printed with why)")


THREADS_HELP = ("CPU threads for the model; 0: automatic, the physical cores other programs leave free, "
                "looked at again every second (default: the threads setting, 0)")


def _use_threads(args) -> None:
    """The --threads flag, else the saved setting (0: automatic), for the model this command runs."""
    from roost.core.settings import SettingsError, _validate
    from roost.engine import threads

    n = getattr(args, "threads", None)
    if n is None:
        n = _settings().current.threads
    try:
        n = _validate("threads", n)
    except SettingsError as e:
        raise SystemExit(f"roost: --threads: {e}")
    threads.configure(n)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="roost", description="Run RWKV language models on your computer. Plain `roost`, with no command, "
                                  "opens the desktop app. / 在电脑上运行 RWKV 模型；不带命令的 `roost` 打开桌面程序。")
    p.add_argument("--version", action="version", version=f"roost {__version__}")
    sub = p.add_subparsers(dest="command")

    def model_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--model", required=True,
                        help="an RWKV checkpoint (.pth or .safetensors), or the name of a downloaded catalog model")
        sp.add_argument("--strategy", default=None, help=STRATEGY_HELP)
        sp.add_argument("--threads", type=int, default=None, metavar="N", help=THREADS_HELP)
        sp.add_argument("--max-tokens", type=int, default=None, help="the longest reply, in tokens")
        sp.add_argument("--temperature", type=float, default=None,
                        help="higher: more varied text, lower: more predictable (e.g. 1.0)")
        sp.add_argument("--top-p", type=float, default=None,
                        help="pick only among the likeliest tokens that make up this share (0..1)")
        sp.add_argument("--top-k", type=int, default=None, help="pick only among this many likeliest tokens (0: any)")
        sp.add_argument("--presence-penalty", type=float, default=None,
                        help="makes any token already used less likely: more new topics")
        sp.add_argument("--frequency-penalty", type=float, default=None,
                        help="makes a token less likely the more often it was used: less repetition")
        sp.add_argument("--penalty-decay", type=float, default=None,
                        help="how slowly those penalties fade for tokens used long ago (1: never)")
        sp.add_argument("--seed", type=int, default=None, help="the same seed gives the same text")

    g = sub.add_parser("generate", help="continue a prompt and stream the text to stdout")
    model_args(g)
    g.add_argument("--format", choices=["raw", "world-chat", "raven-chat", "g1-chat"], default="raw",
                   help="raw continuation (default), or wrap the prompt as one chat turn")
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("prompt", help="the prompt; '-' reads it from stdin")
    g.set_defaults(func=_generate)

    c = sub.add_parser("chat", help="chat in the terminal; the model's state is kept between turns")
    model_args(c)
    c.add_argument("--system", default=None, help="a system prompt")
    c.add_argument("--think", choices=["off", "on", "low", "medium", "high"], default=None,
                   help="G1 reasoning models: answer at once (off), think first (on), or think a bit / think / "
                        "think a lot (low / medium / high)")
    c.set_defaults(func=_chat)

    d = sub.add_parser("doctor", help="what this machine has, and what it can run")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(func=_doctor)
    m = sub.add_parser("models", help="the catalog of official models, with what fits this machine")
    m.add_argument("--all", action="store_true", help="every release, not only the newest of each size")
    m.set_defaults(func=_models)
    dl = sub.add_parser("download", help="download a model (resumable, sha256-verified)")
    dl.add_argument("spec", help="a catalog name or file (see 'roost models --all'), or REPO_ID/FILE")
    dl.add_argument("--models-dir", default=None, help="where models are kept (default: the per-user folder)")
    dl.add_argument("--endpoint", default=None, help="Hugging Face endpoint (default: $HF_ENDPOINT or the Hub)")
    dl.add_argument("--source", choices=["hf", "mirror", "modelscope"], default=None,
                    help="preferred source: the Hub, hf-mirror.com or ModelScope (default: from Settings)")
    dl.add_argument("--token", default=None, help="Hugging Face token (default: $HF_TOKEN)")
    dl.set_defaults(func=_download)
    sv = sub.add_parser("serve", help="serve a model through an OpenAI-compatible API (http://127.0.0.1:8000/v1)")
    sv.add_argument("--model", required=True, help="a model file, or the name of a downloaded catalog model")
    sv.add_argument("--strategy", default=None, help=STRATEGY_HELP)
    sv.add_argument("--threads", type=int, default=None, metavar="N", help=THREADS_HELP)
    sv.add_argument("--host", default="127.0.0.1",
                    help="default 127.0.0.1 (this computer only); any other address needs --api-key")
    sv.add_argument("--port", type=int, default=8000, help="the port to listen on (default 8000)")
    sv.add_argument("--api-key", default=None,
                    help="clients must send 'Authorization: Bearer KEY' (default: $ROOST_API_KEY)")
    sv.add_argument("--allow-origin", action="append", default=None, metavar="ORIGIN",
                    help="also let web pages of ORIGIN call the API (e.g. https://chat.example.org, or null); "
                         "local pages, desktop apps and browser extensions always may (repeatable; "
                         "also Settings: api_allow_origins)")
    sv.add_argument("--model-id", default=None, help="the model name clients use (default: the file name)")
    sv.add_argument("--max-queue", type=int, default=64, help="requests that may wait; more get 503 (default 64)")
    sv.add_argument("--max-batch", type=int, default=16,
                    help="replies decoded together in one pass over the weights (default 16; 1: one at a time)")
    sv.add_argument("--max-tokens-limit", type=int, default=4096, help="the most max_tokens a request may ask")
    sv.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"],
                    help="how much the server prints (default warning)")
    sv.set_defaults(func=_serve)
    st = sub.add_parser("settings", help="show the saved settings, or change one: roost settings set KEY VALUE")
    st_sub = st.add_subparsers(dest="action")
    st_set = st_sub.add_parser("set", help="change one setting (checked; a bad value is refused with the allowed ones)")
    st_set.add_argument("key", help="e.g. proxy, source, models_dir, default_strategy, sampling.temperature")
    st_set.add_argument("value", help="the new value; \"\" resets it to the default")
    st.add_argument("--json", action="store_true", help="all settings as JSON (secrets masked)")
    st.set_defaults(func=_settings_command)
    sc = sub.add_parser("selfcheck", help="check that this installation works (exit code 0 when it does)")
    sc.set_defaults(func=lambda args: __import__("roost.selfcheck", fromlist=["run"]).run())
    return p


def _params(args, **defaults):
    from roost.engine.sampling import SamplingParams

    values = dict(defaults)
    for name in ("max_tokens", "temperature", "top_p", "top_k", "presence_penalty",
                 "frequency_penalty", "penalty_decay", "seed"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    try:
        return SamplingParams(**values)
    except ValueError as e:
        from roost.engine.errors import RoostError

        raise RoostError(f"bad sampling setting: {e}") from None


def _say_unfinished_loads(log_path) -> None:
    """A load by a command of this program that ended it last time (roost.core.loadmarks), said
    once on stderr with what to try instead. (The app's own are said by the app, which must also
    not load that model again by itself.)"""
    from roost.core.loadmarks import forget, other_strategy, unfinished

    for load in unfinished():
        if load.program == "app":
            continue
        forget(load)
        other = other_strategy(load.strategy)
        where = f" (details in {log_path})" if log_path else ""
        try_en = f" If it happens again, try --strategy \"{other}\"." if other else ""
        try_zh = f"如果再次出现，请尝试 --strategy \"{other}\"。" if other else ""
        _say(f"roost: last time `roost {load.program}` ended while loading {load.name} with the strategy "
             f"\"{load.strategy}\" (a crash or a forced stop){where}.{try_en}\n"
             f"roost：上次 `roost {load.program}` 以 \"{load.strategy}\" 方式加载 {load.name} 时意外结束（崩溃或被强制停止）。{try_zh}")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _decide(args):
    """The model file and strategy for --model/--strategy, the choice said on stderr."""
    from roost.core.choice import model_and_strategy

    return model_and_strategy(args.model, args.strategy, say=_say)


def _load(args):
    from roost import engine

    path, strategy = _decide(args)
    from roost.core.settings import load_settings

    from roost.core.loadmarks import marked_load

    with marked_load(path, strategy, program=args.command):
        model = engine.load_model(path, strategy, options=load_settings().load_options())
    print(f"{model.config.label}, loaded in {model.load_seconds:.1f} s", file=sys.stderr, flush=True)
    return model


def _stream(gen) -> None:
    for piece in gen:
        sys.stdout.write(piece)
        sys.stdout.flush()


def _generate(args) -> int:
    from roost.engine.generate import Generation
    from roost.engine.prompts import FORMATS, Message, build_prompt

    _use_threads(args)

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if args.format == "raw":
        text, stops = prompt, tuple(args.stop)
        from roost.engine.sampling import COMPLETION_SAMPLING

        params = _params(args, **COMPLETION_SAMPLING, max_tokens=200, stop=stops)
    else:
        fmt = FORMATS[args.format]
        text = build_prompt(fmt, [Message("user", prompt)])
        params = _params(args, stop=tuple(args.stop) + fmt.stop_strings)
    model = _load(args)
    gen = Generation(model, text, params)
    stopped = False
    try:
        _stream(gen)
    except KeyboardInterrupt:
        gen.stop()
        stopped = True
    print()
    r = gen.result
    finish = FINISHED["cancelled" if stopped else r.finish_reason]
    print(f"[{len(r.tokens)} tokens, {r.tokens_per_second:.1f} tokens/s, {finish}]", file=sys.stderr)
    return 130 if stopped else 0


def _chat(args) -> int:
    """A terminal chat on the app's Runtime: the same state cache, so each turn reads only its text."""
    import signal

    _use_threads(args)
    from roost.core.runtime import Runtime
    from roost.engine.generate import StopFlag
    from roost.core.settings import load_settings
    from roost.engine.prompts import G1_CHAT, default_format

    path, strategy = _decide(args)
    runtime = Runtime(load_settings().load_options(), mark_loads="chat")
    info = runtime.load(path, strategy)
    print(f"{info.label}, loaded in {info.seconds:.1f} s", file=sys.stderr, flush=True)
    reasoning = info.reasoning or args.think is not None
    fmt = G1_CHAT if reasoning else default_format(info.vocab_size)
    think = None if args.think is None else {"off": False, "on": True}.get(args.think, args.think)
    params = _params(args)
    history: list[tuple[str, str]] = []
    print("Type a message and press Enter. /reset starts over, /exit quits. Ctrl+C stops a reply.\n"
          "输入消息后回车；/reset 重新开始，/exit 退出，Ctrl+C 停止当前回答。", file=sys.stderr)
    while True:
        try:
            line = input(f"\n{fmt.user}: ")
        except EOFError:
            return 0
        if line.strip() in ("/exit", "/quit"):
            return 0
        if line.strip() == "/reset":
            history = []
            runtime.forget(0)
            print("(conversation reset / 对话已重置)", file=sys.stderr)
            continue
        if not line.strip():
            continue
        print(f"\n{fmt.assistant}:", end="", flush=True)
        flag = StopFlag()
        previous = signal.signal(signal.SIGINT, lambda *_: flag.set())  # Ctrl+C ends the reply, not the chat
        try:
            reply = runtime.chat(0, history, line, params=params, system=args.system or "", think=think,
                                 on_piece=lambda piece: (sys.stdout.write(piece), sys.stdout.flush()),
                                 stop_flag=flag, reasoning=reasoning)
        finally:
            signal.signal(signal.SIGINT, previous)
        if reply.finish_reason == "cancelled":
            print(" [stopped / 已停止]", end="")
        history += [("user", line), ("assistant", reply.text)]
        print()


def _serve(args) -> int:
    from roost.server.run import serve_cli

    _use_threads(args)
    return serve_cli(args)


def _settings():
    """The settings store; a notice about the file (damaged, values reset) is said once, on stderr."""
    from roost.core.settings import SettingsStore

    store = SettingsStore()
    if store.notice:
        print(f"roost: {store.notice}", file=sys.stderr)
    return store


def _settings_command(args) -> int:
    import json

    from roost.core.settings import SECRET, SettingsError, describe, set_from_text

    store = _settings()
    if args.action == "set":
        try:
            set_from_text(store, args.key, args.value)
        except SettingsError as e:
            from roost.engine.errors import RoostError

            raise RoostError(str(e)) from None
        print(f"{args.key} saved in {store.path}", file=sys.stderr)
    if args.json:
        data = store.current.to_json()
        for key in SECRET:
            data[key] = "(set)" if data.get(key) else ""
        print(json.dumps(data, indent=1, ensure_ascii=False))
        return 0
    rows = describe(store.current)
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    if args.action is None:
        print(f"\nFile: {store.path}    Change one: roost settings set KEY VALUE")
    return 0


def _doctor(args) -> int:
    import json

    from roost.core import paths
    from roost.core.catalog import load_catalog, recommend
    from roost.core.hardware import probe
    from roost.engine.memory import gib

    folder = paths.models_dir()
    machine = probe(folder)
    model, advice = recommend(load_catalog(), machine)
    source = _settings().current.download_source()
    from roost.engine import native

    kernels = {"available": native.available(), "isa": native.isa(), "why_not": native.unavailable_reason()}
    if args.json:
        print(json.dumps({"machine": machine.to_dict(), "models_dir": str(folder), "source": source,
                          "compiled_kernels": kernels,
                          "recommended": {"model": model.id, "strategy": advice.strategy,
                                          "label": advice.label, "reason": advice.reason}},
                         indent=1, ensure_ascii=False))
        return 0
    print(f"System     {machine.os}")
    print(f"CPU        {machine.cpu_name}, {machine.cpu_cores} cores")
    print(f"RAM        {gib(machine.ram_total)} total, {gib(machine.ram_free)} free")
    for g in machine.gpus:
        cc = f", compute {g.compute_capability[0]}.{g.compute_capability[1]}" if g.compute_capability else ""
        print(f"GPU {g.index}      {g.name}: {gib(g.total_bytes)} total, {gib(g.free_bytes)} free{cc}")
    if not machine.gpus:
        print("GPU        no NVIDIA GPU found" + (" (Apple MPS available)" if machine.mps else ""))
    print(f"Kernels    " + (f"Roost's compiled CPU kernels ({kernels['isa']})" if kernels["available"]
                              else f"PyTorch only: {kernels['why_not']}"))
    print(f"Models     {folder} ({gib(machine.disk_free or 0)} free)")
    print(f"Source     {source}")
    for note in machine.notes:
        print(f"Note       {note}")
    print(f"Suggested  {model.display} with '{advice.strategy}': {advice.reason}")
    print(f"建议       {model.display}，策略 '{advice.strategy}'：{advice.reason_zh}")
    return 0


def _models(args) -> int:
    from roost.core import paths
    from roost.core.catalog import load_catalog
    from roost.core.hardware import probe
    from roost.core.library import model_rows
    from roost.engine.memory import gib

    folder = paths.models_dir()
    rows, partial = model_rows(folder, load_catalog(), probe(folder), every_release=args.all)
    rows.sort(key=lambda r: (r.model is None, r.model.version if r.model else 0, r.model.billions if r.model else 0))
    print(f"{'model':<22} {'size':>8} {'strategy':<30} {'on this computer':<44} file")
    for r in rows:
        damaged = " [damaged: delete it and download it again / 已损坏]" if r.problem else ""
        if r.model is None:
            damaged = " [damaged or not a model / 已损坏或不是模型]" if r.problem else ""
            print(f"{r.name[:22]:<22} {gib(r.path.stat().st_size):>8} {'(a file of yours)':<30} {'':<44} "
                  f"{r.file}{damaged}")
            continue
        a, m = r.advice, r.model
        mark = (damaged or " [downloaded]" if r.downloaded else " [partly downloaded]" if r.file in partial
                else " [removed upstream]" if not m.available else "")
        # (the app's words: Advice.fit_words, and the speed to expect)
        fit_en, fit_zh = a.fit_words
        expected = a.expected_speed[0].replace(" tokens/s", " tok/s").replace("about ", "~")
        there = f"{fit_en}{', ' + expected if expected else ''} / {fit_zh}"
        print(f"{m.display:<22} {gib(m.size_bytes):>8} {a.strategy:<30} {there:<44} {m.file}{mark}")
    from roost.core.library import personas

    found = personas(folder)
    if found:
        print("\nState-tuned personas (choose one in the chat's Persona menu):")
        for p in found:
            fits = ", ".join(p.fits) if p.fits else "no model in the folder"
            print(f"  {p.name:<30} {p.problem or 'for ' + fits}")
    print(f"\nModels folder: {folder}    Download one: roost download FILE")
    return 0


def _download(args) -> int:
    from roost.core.catalog import load_catalog
    from roost.core.download import human_size
    from roost.core.library import download_target, target_for
    from roost.core.settings import apply_proxy

    settings = _settings().current
    folder = Path(args.models_dir).expanduser() if args.models_dir else settings.models_folder()
    folder.mkdir(parents=True, exist_ok=True)
    source = args.source or settings.download_source()
    token = args.token or settings.token()
    apply_proxy(settings.proxy)  # the proxy saved in the app (or the system's when none is)
    target = target_for(args.spec, load_catalog())
    print(f"{target.repo}/{target.file} -> {folder}", file=sys.stderr)
    bar = _ProgressBar()
    try:
        path = download_target(target, folder, source=source, endpoints={"hf": args.endpoint},
                               token=token, progress=bar)
    except KeyboardInterrupt:
        bar.end()
        print("Stopped; run the same command again to resume. 已停止；再次运行同一命令即可继续下载。",
              file=sys.stderr)
        return 130
    bar.end()
    note = "sha256 verified" if target.sha256 else "verified against the server's checksum where it gave one"
    print(f"{path} ({human_size(path.stat().st_size)}, {note})")
    return 0


class _ProgressBar:
    """One line on a terminal (redrawn), a line per 10% when output goes to a file."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.shown = -1
        self.drawn = False

    def __call__(self, p) -> None:
        from roost.core.download import human_size

        frac = p.fraction or 0.0
        eta = f"{int(p.eta // 60)}m{int(p.eta % 60):02d}s" if p.eta is not None else "--"
        text = (f"{p.name[:40]:<40} {p.phase:<11} {frac * 100:5.1f}% {human_size(p.done):>9}"
                f" / {human_size(p.total or 0):<9} {human_size(p.speed)}/s  ETA {eta}")
        if self.tty:
            width = 24
            fill = int(frac * width)
            self.stream.write("\r[" + "#" * fill + "-" * (width - fill) + "] " + text + "  ")
            self.stream.flush()
            self.drawn = True
            if p.phase == "done":
                self.end()
        else:
            step = int(frac * 10)
            if step != self.shown or p.phase in ("verifying", "done"):
                self.shown = step
                print(text, file=self.stream, flush=True)

    def end(self) -> None:
        if self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False
