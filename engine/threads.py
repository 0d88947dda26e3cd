"""Which thread the engine's parallel work runs on, and how many threads it uses (the second half).

PyTorch's CPU kernels split their work with OpenMP (GNU libgomp in the official wheels). libgomp
keeps a pool of worker threads for every thread that has started parallel work, for as long as that
thread lives. While the process holds more such threads than there are CPUs, a waiting worker spins
only a moment before it sleeps, so each of the hundreds of small parallel operations of a token
waits for its workers to be woken. Measured on the v7 1.5B shape, `cpu int8`, 2 cores: a token
generated on a second thread after the main thread had loaded the model took 112 ms, against 77 ms
when the main thread had run no parallel work (and 73 ms on the main thread itself).

So a long-lived thread that is not the one that generates (the main thread of ``roost serve``, a
pooled worker that measures the machine) runs its parallel work through :func:`elsewhere`: on a
thread of its own that ends with the work, and its pool with it.
"""

from __future__ import annotations

import threading
from typing import Callable, TypeVar

T = TypeVar("T")


def elsewhere(fn: Callable[..., T], *args, **kwargs) -> T:
    """``fn(*args, **kwargs)`` on a new thread that ends when it returns; its result (or its
    exception) comes back here."""
    result: list = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 -- handed to the caller as it is
            error.append(e)

    thread = threading.Thread(target=run, name="roost-parallel-work", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


# ---- how many threads: a fixed count, or automatic ------------------------------------------------
# On a 2-core machine beside one busy process, 2 threads made a v7 1.5B `cpu int4` token 168 ms
# (2600 ms with every product on OpenMP's static split) where 1 thread made it 131 ms, and prompts
# collapsed from ~140 to ~20 tokens a second (torch's own products). So the automatic count is the
# physical cores the rest of the machine leaves free, looked at again at most once a second while
# the model runs (`adapt`, called by the model for every forward): 2 cores, quiet: 2; one core kept
# busy by another program: 1.

CHECK_EVERY = 1.0  # seconds between two looks at the machine's load
_auto = False
_last: tuple[float, float, float] | None = None  # (time, the machine's busy CPU seconds, ours)


def physical_cores() -> int:
    import os

    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def configure(n: int | None) -> int:
    """Use ``n`` threads (torch's products and the compiled kernels'), or, for ``n`` 0 or None,
    choose automatically from now on (see :func:`adapt`). Returns the count in use now."""
    global _auto, _last
    import torch

    _auto, _last = not n, None
    want = int(n) if n else physical_cores()
    torch.set_num_threads(max(1, want))
    return torch.get_num_threads()


def automatic() -> bool:
    return _auto


def _sample() -> tuple[float, float, float]:
    import time

    import psutil

    t = psutil.cpu_times()
    busy = sum(t) - t.idle - getattr(t, "iowait", 0.0)
    mine = psutil.Process().cpu_times()
    return time.monotonic(), busy, mine.user + mine.system


def others_busy(sample: Callable[[], tuple[float, float, float]] = _sample) -> float | None:
    """How many cores other programs kept busy since the last call (None on the first call)."""
    global _last
    now = sample()
    before, _last = _last, now
    if before is None or now[0] - before[0] <= 0:
        return None
    return max(0.0, ((now[1] - before[1]) - (now[2] - before[2])) / (now[0] - before[0]))


def choose(others: float, cores: int) -> int:
    """The automatic count: the cores left free (a core counts as taken from half busy), at least 1."""
    return max(1, min(cores, cores - int(others + 0.5)))


def adapt(sample: Callable[[], tuple[float, float, float]] = _sample) -> None:
    """In automatic mode, at most once every CHECK_EVERY seconds: as many threads as :func:`choose`
    says for what other programs use now."""
    if not _auto:
        return
    if _last is not None and sample is _sample:
        import time

        if time.monotonic() - _last[0] < CHECK_EVERY:
            return
    others = others_busy(sample)
    if others is None:
        return
    import torch

    want = choose(others, physical_cores())
    if want != torch.get_num_threads():
        torch.set_num_threads(want)
