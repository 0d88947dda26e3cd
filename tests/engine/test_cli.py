"""The roost command line, run as a user would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile


from roost import cli


def roost(*args, stdin: str = "", home=None):
    env = dict(os.environ)
    if home is not None:
        env["ROOST_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "roost", *args], input=stdin, capture_output=True,
                          text=True, cwd=tempfile.gettempdir(), env=env, timeout=300)


def test_generate_streams_a_reproducible_continuation(make_checkpoint):
    path = str(make_checkpoint("v5.2", n_layer=2, n_embd=128, seed=2))
    a = roost("generate", "--model", path, "--max-tokens", "12", "--seed", "7", "--temperature", "1", "Once upon")
    b = roost("generate", "--model", path, "--max-tokens", "12", "--seed", "7", "--temperature", "1", "Once upon")
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout and a.stdout.strip()
    assert "12 tokens" in a.stderr and "reached the token limit" in a.stderr and "length]" not in a.stderr


def test_chat_keeps_state_between_turns_and_exits(make_checkpoint):
    path = str(make_checkpoint("v7.0", n_layer=2, n_embd=128, seed=2))
    r = roost("chat", "--model", path, "--max-tokens", "6", stdin="hello\nand again\n/exit\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("Assistant:") == 2


def test_a_damaged_checkpoint_is_one_plain_sentence_and_the_details_go_to_the_log(tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"PK\x03\x04 not really a zip" + bytes(4000))
    home = tmp_path / "home"
    r = roost("generate", "--model", str(bad), "--strategy", "cpu fp32", "hi", home=home)
    assert r.returncode == 2
    message = r.stderr.strip().splitlines()[-1]
    assert message == ("roost: broken.pth is damaged or incomplete and cannot be read (often an interrupted "
                       "download). Download it again."), r.stderr
    assert "Traceback" not in r.stderr and "zip" not in r.stderr.lower()
    assert "BadZipFile" in (home / "roost.log").read_text()  # the reader's own words, for a report
    r = roost("generate", "--model", str(bad), "--strategy", "cuda fp16", "hi", home=home)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_version_and_help():
    assert roost("--version").stdout.startswith("roost ")
    assert "chat" in roost("--help").stdout
    assert "with no command, opens the desktop app" in " ".join(roost("--help").stdout.split())
    for command in ("generate", "chat", "doctor", "serve"):  # every option says what it does
        from roost import cli

        sub = next(a for a in cli._parser()._actions if a.dest == "command").choices[command]
        silent = [a.option_strings for a in sub._actions if a.option_strings and not a.help]
        assert not silent, f"roost {command}: options without help: {silent}"


def test_a_strategy_this_machine_cannot_run_is_refused_before_loading_is_announced(make_checkpoint):
    r = roost("generate", "--model", str(make_checkpoint("v7.0")), "--strategy", "gpu turbo9", "hi")
    assert r.returncode == 2 and "Loading" not in r.stderr and "gpu turbo9" in r.stderr and "Traceback" not in r.stderr


def test_doctor_and_models_describe_this_machine():
    r = roost("doctor", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["machine"]["ram_total"] > 0 and report["recommended"]["strategy"]
    r = roost("models")
    assert r.returncode == 0 and "RWKV-7 G1" in r.stdout
    g1 = next(line for line in r.stdout.splitlines() if line.startswith("RWKV-7 G1 0.1B"))
    # the app's words for the fit, the speed to expect, in both languages; the old "usable" is gone
    assert "Fast, ~" in g1 and " tok/s / 流畅" in g1 and "usable" not in r.stdout


def test_models_lists_state_tuned_personas_with_the_models_they_fit(make_checkpoint, tmp_path):
    import shutil

    import torch

    from roost.engine.synthetic import make_weights

    home = tmp_path / "home"
    folder = home / "models"
    folder.mkdir(parents=True)
    tuned = make_weights("v7.0", n_layer=2, n_embd=128, time_state=True, seed=3)
    torch.save({k: v for k, v in tuned.items() if k.endswith(".att.time_state")}, folder / "rwkv7-poet.pth")
    torch.save({k: v for k, v in tuned.items() if not k.endswith(".att.time_state")}, tmp_path / "rwkv7-base.pth")
    shutil.copy(tmp_path / "rwkv7-base.pth", folder / "rwkv7-base.pth")
    r = roost("models", home=home)
    assert r.returncode == 0, r.stderr
    listed = r.stdout.split("State-tuned personas")
    assert len(listed) == 2 and "rwkv7-poet.pth" not in listed[0]  # not a model
    assert "rwkv7-poet" in listed[1] and "for rwkv7-base.pth" in listed[1]


# --- one strategy rule for every entry point ------------------------------------------------------
def _save_settings(home, **settings):
    home.mkdir(parents=True, exist_ok=True)
    (home / "settings.json").write_text(json.dumps(settings))


def test_generate_chat_and_serve_decide_the_strategy_alike(make_checkpoint, tmp_path):
    from roost.core.advisor import advise_file

    path = make_checkpoint("v6.0", n_layer=2, n_embd=128, seed=3)
    auto = advise_file(path).strategy
    home = tmp_path / "home"
    for args in (["generate", "--model", str(path), "--max-tokens", "2", "hi"],
                 ["generate", "--model", str(path), "--strategy", "auto", "--max-tokens", "2", "hi"],
                 ["chat", "--model", str(path), "--max-tokens", "2"]):
        r = roost(*args, stdin="/exit\n", home=home)
        assert r.returncode == 0, r.stderr
        assert f"({auto})" in r.stderr and "Strategy chosen automatically:" in r.stderr, r.stderr
    # the app's saved default, then the model's own saved strategy, then the flag
    _save_settings(home, default_strategy="cpu bf16")
    r = roost("generate", "--model", str(path), "--max-tokens", "2", "hi", home=home)
    assert r.returncode == 0 and "(cpu bf16)" in r.stderr and "automatically" not in r.stderr, r.stderr
    _save_settings(home, default_strategy="cpu bf16", strategy_overrides={path.name: "cpu fp32"})
    r = roost("chat", "--model", str(path), "--max-tokens", "2", stdin="/exit\n", home=home)
    assert r.returncode == 0 and "(cpu fp32)" in r.stderr, r.stderr
    r = roost("generate", "--model", str(path), "--strategy", "cpu bf16", "--max-tokens", "2", "hi", home=home)
    assert r.returncode == 0 and "(cpu bf16)" in r.stderr, r.stderr


def test_the_rule_in_one_place(tmp_path):
    from roost.core.settings import AUTO, Settings

    s = Settings().replace(default_strategy="cpu bf16", strategy_overrides={"a.pth": "cpu int8"})
    assert Settings().strategy_for("a.pth") == AUTO
    assert s.strategy_for(tmp_path / "b.pth") == "cpu bf16"
    assert s.strategy_for(tmp_path / "a.pth") == "cpu int8"
    assert s.strategy_for("a.pth", "cpu fp32") == "cpu fp32"
    assert s.strategy_for("a.pth", "auto") == AUTO  # asked for explicitly: the advisor decides


# --- calm failures -----------------------------------------------------------------------------------
def test_serve_a_missing_path_says_there_is_no_file():
    r = roost("serve", "--model", "/typo/nope.pth")
    assert r.returncode == 2
    assert "There is no file at /typo/nope.pth" in r.stderr and "roost download" not in r.stderr


def test_serve_a_catalog_model_not_downloaded_says_how_to_get_it(tmp_path):
    from roost.core.catalog import load_catalog

    model = load_catalog(refreshed=False)[0]
    r = roost("serve", "--model", model.id, home=tmp_path / "home")
    assert r.returncode == 2 and f"roost download {model.id}" in r.stderr


def test_serve_on_a_busy_port_fails_before_loading_and_announces_nothing(make_checkpoint):
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        port = busy.getsockname()[1]
        r = roost("serve", "--model", str(make_checkpoint("v7.0")), "--port", str(port))
    finally:
        busy.close()
    assert r.returncode == 2
    assert "Cannot listen on 127.0.0.1" in r.stderr
    assert "Loading" not in r.stderr and "http://" not in r.stderr and "Traceback" not in r.stderr


def test_a_reader_that_goes_away_is_no_error():
    """`roost models | head`: the pipe closes while roost still writes."""
    p = subprocess.Popen([sys.executable, "-m", "roost", "models", "--all"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, cwd=tempfile.gettempdir())
    p.stdout.close()  # the reader is gone before the first line
    err = p.stderr.read().decode()
    p.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err
    assert p.returncode == cli.BROKEN_PIPE


def test_ctrl_c_during_generate_says_stopped_and_exits_130(make_checkpoint):
    path = str(make_checkpoint("v5.2", n_layer=2, n_embd=128, seed=2))
    p = subprocess.Popen([sys.executable, "-m", "roost", "generate", "--model", path, "--strategy", "cpu fp32",
                          "--max-tokens", "100000", "--temperature", "1", "--seed", "1", "Once"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tempfile.gettempdir())
    try:
        assert p.stdout.read(1)  # text is streaming
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    err = err.decode()
    assert p.returncode == 130, err
    assert "stopped" in err and "token limit" not in err and "Traceback" not in err, err


BAD_ARGUMENTS = {
    None: [["--bogus"], ["no-such-command"]],
    "generate": [[], ["hi"], ["--model", "/nope/x.pth", "hi"], ["--model", "{bad}", "hi"],
                 ["--model", "{good}", "--strategy", "warp9", "hi"], ["--model", "{good}", "--max-tokens", "-3", "hi"],
                 ["--model", "{good}", "--temperature", "hot", "hi"], ["--model", "{dir}", "hi"],
                 ["--model", "{good}", "--format", "poem", "hi"]],
    "chat": [[], ["--model", "/nope/x.pth"], ["--model", "{bad}"], ["--model", "{good}", "--think", "maybe"],
             ["--model", "{good}", "--top-p", "7"]],
    "doctor": [["--bogus"], ["extra"]],
    "models": [["--bogus"]],
    "download": [[], ["no-such-model"], ["x", "--source", "ftp"]],
    "serve": [[], ["--model", "/nope/x.pth"], ["--model", "{good}", "--port", "99999"],
              ["--model", "{good}", "--port", "abc"], ["--model", "{good}", "--host", "10.1.2.3"],
              ["--model", "{good}", "--host", " "], ["--model", "{bad}"], ["--model", "{good}", "--strategy", "warp9"]],
    "selfcheck": [["extra"]],
    "settings": [["--bogus"], ["set"], ["set", "theme"], ["set", "theme", "purple"], ["set", "nope", "x"],
                 ["set", "api_port", "0"], ["set", "proxy", "ftp://x"], ["set", "default_strategy", "warp9"],
                 ["set", "sampling.temperature", "hot"], ["set", "sampling.top_p", "7"], ["set", "sampling.nope", "1"],
                 ["set", "models_dir", "/proc/roost-cannot-write-here"], ["set", "last_model", "x.pth"]],
}


def test_every_subcommand_refuses_bad_arguments_without_a_traceback(make_checkpoint, tmp_path, capsys):
    commands = next(a for a in cli._parser()._actions if a.dest == "command").choices
    assert set(commands) | {None} == set(BAD_ARGUMENTS), "a new subcommand needs its bad-argument cases here"
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x80\x02garbage")
    names = {"good": str(make_checkpoint("v7.0")), "bad": str(bad), "dir": str(tmp_path)}
    for command, cases in BAD_ARGUMENTS.items():
        for case in cases:
            argv = ([command] if command else []) + [a.format(**names) for a in case]
            try:
                code = cli.main(argv)
            except SystemExit as e:  # argparse: usage and a message, exit 2
                code = e.code
            out, err = capsys.readouterr()
            assert code == 2, f"roost {' '.join(argv)} -> {code}\n{out}{err}"
            assert "Traceback" not in out + err and err.strip(), f"roost {' '.join(argv)}\n{err}"


def test_an_unexpected_failure_is_one_line_and_a_log_entry(monkeypatch, capsys):
    def broken(args):
        raise RuntimeError("a bug\nwith a second line")

    monkeypatch.setattr(cli, "_doctor", broken)
    assert cli.main(["doctor"]) == 1
    err = capsys.readouterr().err
    assert "doctor failed unexpectedly (RuntimeError: a bug)" in err and "second line" not in err
    from roost.core.logs import setup_logging

    log = setup_logging().read_text()
    assert "Traceback" in log and "RuntimeError: a bug" in log


def test_ctrl_c_in_chat_stops_the_reply_and_the_chat_goes_on(make_checkpoint):
    """Each reply could run for 1500 tokens; each is stopped by Ctrl+C once it streams, so the test
    waits only for a few tokens whatever the machine's speed (a busy 2-core machine needed more than
    120 s for a whole second reply)."""
    import queue
    import threading

    path = str(make_checkpoint("v5.2", n_layer=2, n_embd=128, seed=2))
    p = subprocess.Popen([sys.executable, "-m", "roost", "chat", "--model", path, "--strategy", "cpu fp32",
                          "--max-tokens", "1500", "--temperature", "1"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tempfile.gettempdir(), text=True)
    chars: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [chars.put(c) for c in iter(lambda: p.stdout.read(1), "")], daemon=True).start()
    seen = ""

    def until(text: str, count: int, extra: int = 0) -> None:
        nonlocal seen
        while seen.count(text) < count:
            seen += chars.get(timeout=120)
        for _ in range(extra):
            seen += chars.get(timeout=120)

    try:
        for turn, text in enumerate(["Tell me a story", "and again"], 1):
            p.stdin.write(text + "\n")
            p.stdin.flush()
            until("Assistant:", turn, extra=2)  # the reply is streaming
            p.send_signal(signal.SIGINT)
            until("[stopped", turn)
        p.stdin.write("/exit\n")
        p.stdin.flush()
        p.wait(timeout=60)
        err = p.stderr.read()
    finally:
        p.kill()
    assert p.returncode == 0, err
    assert seen.count("[stopped") == 2 and seen.count("Assistant:") == 2 and "Traceback" not in err


def test_serve_lets_in_the_websites_the_user_allows(make_checkpoint, tmp_path):
    """`roost serve --allow-origin` and the saved api_allow_origins both reach the server."""
    import json
    import socket
    import urllib.error
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = tmp_path / "home"
    _save_settings(home, api_allow_origins=["https://saved.example.org"])
    env = {**os.environ, "ROOST_HOME": str(home)}
    p = subprocess.Popen([sys.executable, "-m", "roost", "serve", "--model", str(make_checkpoint("v7.0")),
                          "--port", str(port), "--allow-origin", "https://flag.example.org"],
                         stderr=subprocess.PIPE, text=True, env=env, cwd=tempfile.gettempdir())
    try:
        for line in p.stderr:
            if "OpenAI-compatible API at" in line:
                break

        def status(origin):
            body = json.dumps({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                         headers={"Origin": origin, "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code

        assert status("https://flag.example.org") == 200
        assert status("https://saved.example.org") == 200
        assert status("https://other.example.org") == 403
    finally:
        p.terminate()
        p.wait(30)
