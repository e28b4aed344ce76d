"""Where a model was computed: device, CPU kernels, library versions, threads, determinism.

Training records it beside the weights; tracking puts it on the MLflow run and the model
version as `env.*` tags; `emoalign audit` compares it with the machine re-running the steps.
The same data, code and config give bit-identical weights only in the same environment:
PyTorch dispatches other CPU kernels (ATEN_CPU_CAPABILITY) on other CPUs, and GPUs add
their own non-determinism, so an audit elsewhere judges within a tolerance instead.
"""

from __future__ import annotations

import os
import platform
from contextlib import contextmanager

# Measured across CPU kernel sets on the default run (benchmarks/RESULTS.md): models that
# differ only in float rounding still predict most test utterances alike. An audit in another
# environment asks at least this share of agreement.
MIN_AGREEMENT = 0.75

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(device, deterministic: bool) -> dict[str, str]:
    """The env.* tags of a computation on `device` in this process."""
    import torch

    cuda = device.type == "cuda"
    return {
        "env.device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "env.cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "env.cpu_model": cpu_model(),
        "env.torch_version": torch.__version__,
        "env.cuda_version": torch.version.cuda or "none",
        "env.cudnn_version": str(torch.backends.cudnn.version()) if cuda else "none",
        "env.threads": str(torch.get_num_threads()),
        "env.deterministic": str(deterministic).lower(),
    }


@contextmanager
def deterministic_algorithms(device, wanted: bool):
    """PyTorch's deterministic algorithms on CUDA while training when `wanted` (CPU kernels
    are deterministic already; the restriction costs GPU speed); yields whether they are
    enforced. cuBLAS needs its workspace fixed before the first CUDA call to comply."""
    import torch

    if not (wanted and device.type == "cuda"):
        yield False
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield True
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark = before[1]


# mallopt(3)'s parameters, and glibc's defaults for them
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
TRIM_DEFAULT, PAD_DEFAULT, MMAPS_DEFAULT = 128 * 1024, 128 * 1024, 65536


@contextmanager
def allocator_keeps_freed_memory():
    """While training: glibc's malloc keeps what is freed for the next allocation instead of
    giving it back to the kernel. By default it gives back every large block (a block past
    the mmap threshold is unmapped when freed; the heap's top is trimmed past 128 KiB free)
    and the next step's tensors of the same size fault it back in, page by page: on CPU, 8
    of the default run's 20 s of training went so, in the kernel (4.6 million page faults).
    Here every block comes from the heap (no mapping of its own), the heap grows 64 MiB at a
    time and is trimmed only past 2 GiB free. Only where memory comes from changes, not the
    arithmetic: the weights are the same bit for bit (benchmarks/RESULTS.md). Not glibc
    (musl, macOS): nothing changes. Afterwards glibc's defaults come back, and what is free
    is given back."""
    import ctypes
    import platform

    libc = ctypes.CDLL(None) if platform.libc_ver()[0] == "glibc" else None
    if libc is None or not hasattr(libc, "mallopt"):
        yield
        return
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    libc.mallopt(M_TOP_PAD, 64 << 20)
    try:
        yield
    finally:
        libc.mallopt(M_TOP_PAD, PAD_DEFAULT)
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_DEFAULT)
        libc.mallopt(M_MMAP_MAX, MMAPS_DEFAULT)
        libc.malloc_trim(0)


def differences(recorded: dict[str, str], now: dict[str, str]) -> dict[str, tuple[str, str]]:
    """key -> (recorded, now) for every env.* value that differs (missing: "unrecorded")."""
    keys = sorted({k for k in (*recorded, *now) if k.startswith("env.")})
    return {k: (recorded.get(k, "unrecorded"), now.get(k, "unrecorded")) for k in keys
            if recorded.get(k, "unrecorded") != now.get(k, "unrecorded")}


def task_threads(configured: int, concurrent: int) -> int | None:
    """CPU threads for one task when `concurrent` tasks share this machine: train.threads
    when set, else the cores shared out (None: torch's default, one per core)."""
    if configured:
        return configured
    if concurrent > 1:
        return max(1, (os.cpu_count() or 1) // concurrent)
    return None
