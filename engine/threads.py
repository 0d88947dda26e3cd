"""Which thread the engine's parallel work runs on.

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

