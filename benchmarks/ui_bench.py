"""How responsive the desktop app stays: time to window shown, and the longest UI-thread stall while
generating and while downloading.

    QT_QPA_PLATFORM=offscreen python benchmarks/ui_bench.py [--tokens 200] [--download-mb 300]

A 5 ms QTimer runs on the UI thread; every gap between its ticks beyond 5 ms is time the UI could
not react. Generation uses a random-weight RWKV-7 of the 0.1B shape (12x768, cpu fp32); the
download comes from the local Hub test server at full loopback speed (sha256 verified as usual).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STARTUP = """
import time
t0 = time.perf_counter()
from roost.gui.app import create_window
from PySide6.QtWidgets import QApplication
win = create_window(start_engine=False)
QApplication.instance().processEvents()
print("shown", time.perf_counter() - t0, flush=True)
"""


def time_to_window(runs: int = 3) -> tuple[float, float]:
    """(seconds from process start, seconds from the first import) to the window shown; medians."""
    home = tempfile.mkdtemp(prefix="roost-bench-")
    env = {**os.environ, "ROOST_HOME": home}
    total, inner = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-c", STARTUP], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        for line in p.stdout:
            if line.startswith("shown"):
                total.append(time.perf_counter() - t0)
                inner.append(float(line.split()[1]))
                break
        p.kill()
        p.wait()
    return statistics.median(total), statistics.median(inner)


class StallMeter:
    def __init__(self, app):
        from PySide6.QtCore import QTimer

        self.app = app
        self.gaps: list[float] = []
        self.last = time.perf_counter()
        self.timer = QTimer(interval=5, timeout=self.tick)

    def tick(self):
        now = time.perf_counter()
        self.gaps.append(now - self.last)
        self.last = now

    def run_until(self, done, timeout: float) -> None:
        self.gaps.clear()
        self.last = time.perf_counter()
        self.timer.start()
        end = time.time() + timeout
        while not done() and time.time() < end:
            self.app.processEvents()
            time.sleep(0.001)
        self.timer.stop()

    def report(self) -> str:
        g = sorted(self.gaps)
        p99 = g[int(len(g) * 0.99) - 1] if g else 0.0
        return f"longest stall {max(g) * 1000:.0f} ms, 99th percentile {p99 * 1000:.0f} ms over {len(g)} ticks"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--download-mb", type=int, default=300)
    args = ap.parse_args()

    total, inner = time_to_window()
    print(f"time to window shown: {total:.2f} s from process start ({inner:.2f} s after the first import)")

    home = Path(tempfile.mkdtemp(prefix="roost-bench-"))
    os.environ["ROOST_HOME"] = str(home)
    from PySide6.QtWidgets import QApplication

    from roost.core.queue import DownloadQueue
    from roost.core.library import Target
    from roost.gui.app import create_window
    from roost.gui.worker import EngineThread
    from roost.engine.synthetic import save_checkpoint

    win = create_window(start_engine=False)
    app = QApplication.instance()
    win.ctl.attach_engine(EngineThread(win.ctl))
    # as the app starts: the machine probe (which imports torch), then set_machine on the UI thread
    from roost.core.catalog import load_catalog
    from roost.core.hardware import probe

    win.ctl.set_machine(probe(home), load_catalog())
    meter = StallMeter(app)
    # the app shows and paints its window before anything else starts; the first paint (fonts,
    # text layout: ~70 ms here) is start-up, not a stall of what is measured below
    meter.run_until(lambda: False, 1.0)
    print(f"first second after the window is shown: {meter.report()}")

    ckpt = save_checkpoint(home / "bench-v7-12x768.pth", "v7.0", n_layer=12, n_embd=768)
    win.ctl.load_model(str(ckpt), "cpu fp32")
    meter.run_until(lambda: win.ctl.info is not None or win.ctl.error is not None, 300)
    print(f"while loading a 12x768 model: {meter.report()}")
    win.chat.sampling.set_values({"max_tokens": args.tokens})
    replies = []
    win.ctl.engine.worker.done.connect(lambda rid, r: replies.append(r))
    win.chat.input.setPlainText("Tell me a long story about a lighthouse keeper.")
    win.chat.send()
    meter.run_until(lambda: bool(replies) and win.chat.rid is None, 600)
    r = replies[0]
    print(f"while generating {r.tokens} tokens at {r.tokens_per_second:.1f} tokens/s: {meter.report()}")

    # a long conversation: 1,000 messages of a few paragraphs, some with code
    store = win.ctl.store
    long = store.new("A long chat")
    for i in range(500):
        store.append(long.id, "user", f"Question {i}: how does this part work?")
        store.append(long.id, "assistant", f"Answer {i}. " + "Some explanation with **bold** words. " * 12
                     + ("\n\n```python\nfor n in range(10):\n    print(n * n)\n```\n" if i % 5 == 0 else ""))
    win.chat.reload_list()
    t0 = time.perf_counter()
    item = win.chat._item_for(long.id)
    win.chat.list.setCurrentItem(item)  # as a click on it in the list
    win.chat.view.viewport().repaint()
    print(f"opening a 1,000-message chat: {(time.perf_counter() - t0) * 1000:.0f} ms to its first paint")
    assert "Answer 499" in win.chat.view.toPlainText()
    meter.run_until(lambda: False, 0.5)
    bar = win.chat.view.verticalScrollBar()
    t0, last = time.perf_counter(), [0.0]

    def scrolled():  # to the top a page every 20 ms, as a reader paging up
        now = time.perf_counter()
        if now - last[0] >= 0.02:
            last[0] = now
            bar.setValue(bar.value() - bar.pageStep())
        return bar.value() <= bar.minimum() or now - t0 > 10

    meter.run_until(scrolled, 30)
    print(f"scrolling it to the top: {meter.report()}")
    # a reply streaming into it, 20 pieces a second (the model would first read the whole
    # 60k-token history; what is measured here is the view's work)
    from PySide6.QtCore import QTimer

    bar.setValue(bar.maximum())
    store.append(long.id, "user", "And one more question.")
    chat = win.chat
    chat.reply_id, chat.rid, chat.partial = store.append(long.id, "assistant", "").id, -1, ""
    chat.render()
    pieces = iter([" word"] * 150 + [" and **bold**"] * 25 + ["\n\n```python\nprint(1)\n```\n"] + [" end"] * 24)
    feed = QTimer(interval=50, timeout=lambda: chat.on_piece(-1, next(pieces, "")))
    feed.start()
    t0 = time.perf_counter()
    meter.run_until(lambda: time.perf_counter() - t0 > 10, 20)
    feed.stop()
    chat.rid = None
    print(f"streaming 200 pieces into it: {meter.report()}")

    from tests.hubserver import HubServer

    data = os.urandom(args.download_mb << 20)
    hub = HubServer()
    hub.add("bench/repo", "big.pth", data)
    hub.start()
    q = DownloadQueue(home / "dl", endpoints={"hf": hub.hub_url})
    win.ctl.attach_queue(q)
    import hashlib

    t0 = time.perf_counter()
    job = q.add(Target("bench/repo", "big.pth", sha256=hashlib.sha256(data).hexdigest(), size=len(data)))
    meter.run_until(lambda: job.finished, 600)
    secs = time.perf_counter() - t0
    print(f"while downloading {args.download_mb} MB at {args.download_mb / secs:.0f} MB/s ({job.state}): "
          f"{meter.report()}")
    hub.stop()
    win.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
