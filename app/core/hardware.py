"""What this machine has: OS, CPU, RAM, disk, NVIDIA GPUs (through NVML even when the installed
torch is a CPU build), Apple MPS. No vendor tool output is parsed."""

from __future__ import annotations

import os
import platform
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    total_bytes: int
    free_bytes: int
    compute_capability: tuple[int, int] | None = None


@dataclass(frozen=True)
class Machine:
    os: str
    cpu_name: str
    cpu_cores: int
    ram_total: int
    ram_free: int
    disk_free: int | None = None  # in the models folder
    gpus: tuple[Gpu, ...] = ()
    torch_cuda: bool = False  # the installed torch can use the NVIDIA GPUs
    mps: bool = False  # Apple Silicon GPU usable by torch
    notes: tuple[str, ...] = field(default=())
    read_rate: float = 0.0  # bytes/s the CPU reads memory at (measure_read_rate); 0: not measured
    # the vector instructions PyTorch's CPU kernels use here ("AVX512", "AVX2", "DEFAULT" on most
    # Arm builds...); "" when not known
    cpu_capability: str = ""
    # how many times faster a token's product runs over 4-bit weights than over 8-bit ones
    # (engine.int4.speed_against_int8, measured once); 0: not measured or no 4-bit kernel
    int4_ratio: float = 0.0
    # the instruction set the compiled kernels run with here (engine.native.isa(): "AVX512-VNNI",
    # "AVX2", "NEON"...); "": generation runs on the PyTorch path (no kernels, or not probed)
    kernels: str = ""

    @property
    def usable_gpu(self) -> Gpu | None:
        return self.gpus[0] if self.gpus and self.torch_cuda else None

    def to_dict(self) -> dict:
        return asdict(self)


def probe(models_dir: str | os.PathLike | None = None, *, measure: bool = True) -> Machine:
    """What this computer has. `measure`: its memory read rate and 4-bit kernel speed too (measured
    once, then remembered)."""
    import psutil

    vm = psutil.virtual_memory()
    disk = None
    if models_dir is not None:
        folder = Path(models_dir)
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        disk = shutil.disk_usage(folder).free
    gpus, notes = _nvml_gpus()
    torch_cuda, mps, capability, kernels = False, False, "", ""
    try:
        import torch

        from roost.engine import native

        torch_cuda = torch.cuda.is_available()
        capability = torch.backends.cpu.get_cpu_capability()
        kernels = native.isa() if native.available() else ""
        mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
        if torch_cuda and not gpus:
            gpus = tuple(_torch_gpu(i) for i in range(torch.cuda.device_count()))
    except ImportError:
        notes += ("PyTorch is not installed.",)
    if gpus and not torch_cuda:
        notes += ("An NVIDIA GPU is present, but the installed PyTorch is a CPU build: a CUDA build "
                  "of PyTorch would run models several times faster on it.",)
    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    cpu = _cpu_name()
    return Machine(os=f"{platform.system()} {platform.release()}", cpu_name=cpu, cpu_cores=cores,
                   ram_total=vm.total, ram_free=vm.available, disk_free=disk, gpus=gpus,
                   torch_cuda=torch_cuda, mps=mps, notes=notes,
                   read_rate=read_rate(cpu, cores, vm.total) if measure else 0.0, cpu_capability=capability,
                   int4_ratio=int4_ratio(cpu, cores, vm.total) if measure else 0.0, kernels=kernels)


def read_rate(cpu: str, cores: int, ram: int) -> float:
    """This computer's memory read rate in bytes/s: measured at each probe (a fraction of a second)
    and the best reading kept in the data folder (``machine.json``) for this CPU and memory size:
    other programs only ever slow a reading down, and one taken while the machine was busy (11 GB/s
    against 21.5 quiet here) must not make every model look slow for good. 0.0 if it cannot be."""
    return _remembered("read_rate", lambda: measure_read_rate(), cpu, cores, ram, best=True)


def int4_ratio(cpu: str, cores: int, ram: int) -> float:
    """How many times faster the 4-bit products run a token's product here than the 8-bit ones (the
    compiled kernels' where they are used, else PyTorch's; about a second, once, remembered as
    :func:`read_rate`); 0.0 if it cannot be measured."""
    from roost.engine import native

    # (the compiled kernels' ratio apart from PyTorch's: a figure measured before they came is not theirs)
    name = f"int4_ratio_{native.FORMAT}" if native.available() else "int4_ratio"
    return _remembered(name, lambda: measure_int4_ratio(), cpu, cores, ram)


def _remembered(name: str, measure: Callable[[], float], cpu: str, cores: int, ram: int, *,
                best: bool = False) -> float:
    """The figure ``name`` of ``machine.json`` when it was measured on this computer (the same CPU,
    cores and memory size), else ``measure()``, kept there beside the others when it is > 0.
    ``best``: measured each time all the same, and the larger of the two kept and returned."""
    import json

    from roost.core import paths

    cache = paths.data_dir() / "machine.json"
    key = {"cpu": cpu, "cores": cores, "ram": ram}
    try:
        saved = json.loads(cache.read_text(encoding="utf-8"))
        if not isinstance(saved, dict) or {k: saved.get(k) for k in key} != key:
            saved = {}
    except (OSError, ValueError):
        saved = {}
    try:
        before = float(saved.get(name, 0))
    except (TypeError, ValueError):
        before = 0.0
    if before > 0 and not best:
        return before
    value = measure()
    if best and before >= value:
        return before
    if value > 0:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps({**saved, **key, name: value}), encoding="utf-8")
        except OSError:
            pass
    return value


def measure_int4_ratio() -> float:
    """:func:`roost.engine.int4.speed_against_int8` on a thread of its own (see
    :func:`measure_read_rate`); 0.0 where it cannot run (no torch, no 4-bit kernel, no memory)."""
    try:
        from roost.engine.int4 import speed_against_int8
        from roost.engine.threads import elsewhere
    except ImportError:
        return 0.0
    try:
        return elsewhere(speed_against_int8)
    except (RuntimeError, MemoryError):
        return 0.0


def measure_read_rate(mib: int = 256, passes: int = 5) -> float:
    """Bytes/s of a multi-threaded sum over a buffer much larger than the CPU caches (the best of
    `passes`, so that a moment of other work does not count): what reading a model's weights for
    each token is bounded by."""
    import time

    try:
        import torch
    except ImportError:
        return 0.0
    from roost.engine.threads import elsewhere

    def measure() -> float:
        try:
            buf = torch.ones(mib << 18, dtype=torch.float32)  # mib MiB of float32
        except RuntimeError:  # not enough memory now
            return 0.0
        buf.sum()  # touch every page first
        times = []
        for _ in range(passes):
            t0 = time.perf_counter()
            buf.sum()
            times.append(time.perf_counter() - t0)
        return buf.numel() * 4 / min(times)

    # on a thread that ends with it: the calling thread (the app's UI or a pooled worker) keeps no
    # OpenMP pool to slow the generating thread (roost.engine.threads)
    return elsewhere(measure)


def _cpu_name() -> str:
    if platform.system() == "Linux":
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
    return platform.processor() or platform.machine()


def _nvml_gpus() -> tuple[tuple[Gpu, ...], tuple[str, ...]]:
    try:
        import pynvml
    except ImportError:
        return (), ()
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver, or no NVIDIA GPU: NVML raises its own error types
        return (), ()
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            try:
                cc = tuple(pynvml.nvmlDeviceGetCudaComputeCapability(h))
            except Exception:
                cc = None
            gpus.append(Gpu(i, name.decode() if isinstance(name, bytes) else name, mem.total, mem.free, cc))
        return tuple(gpus), ()
    finally:
        pynvml.nvmlShutdown()


def _torch_gpu(i: int) -> Gpu:
    import torch

    free, total = torch.cuda.mem_get_info(i)
    p = torch.cuda.get_device_properties(i)
    return Gpu(i, p.name, total, free, (p.major, p.minor))
