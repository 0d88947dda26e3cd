"""What this machine has: OS, CPU, RAM, disk, NVIDIA GPUs (through NVML even when the installed
torch is a CPU build), Apple MPS. No vendor tool output is parsed."""

from __future__ import annotations

import os
import platform
import shutil
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

    @property
    def usable_gpu(self) -> Gpu | None:
        return self.gpus[0] if self.gpus and self.torch_cuda else None

    def to_dict(self) -> dict:
        return asdict(self)


def probe(models_dir: str | os.PathLike | None = None) -> Machine:
    import psutil

    vm = psutil.virtual_memory()
    disk = None
    if models_dir is not None:
        folder = Path(models_dir)
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        disk = shutil.disk_usage(folder).free
    gpus, notes = _nvml_gpus()
    torch_cuda, mps = False, False
    try:
        import torch

        torch_cuda = torch.cuda.is_available()
        mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
        if torch_cuda and not gpus:
            gpus = tuple(_torch_gpu(i) for i in range(torch.cuda.device_count()))
    except ImportError:
        notes += ("PyTorch is not installed.",)
    if gpus and not torch_cuda:
        notes += ("An NVIDIA GPU is present, but the installed PyTorch is a CPU build: a CUDA build "
                  "of PyTorch would run models several times faster on it.",)
    return Machine(os=f"{platform.system()} {platform.release()}", cpu_name=_cpu_name(),
                   cpu_cores=psutil.cpu_count(logical=False) or os.cpu_count() or 1,
                   ram_total=vm.total, ram_free=vm.available, disk_free=disk, gpus=gpus,
                   torch_cuda=torch_cuda, mps=mps, notes=notes)


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
