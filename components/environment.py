"""Where a model was computed: device, CPU kernels, library versions, threads, determinism;
and the allocator settings the processes that train are started with.

Training records it beside the weights; tracking puts it on the MLflow run and the model
version as `env.*` tags; `emoalign audit` compares it with the machine re-running the steps.
The same data, code and config give bit-identical weights only in the same environment:
PyTorch dispatches other CPU kernels (ATEN_CPU_CAPABILITY) on other CPUs, and GPUs add
their own non-determinism, so an audit elsewhere judges within a tolerance instead.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
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


# glibc's malloc for training, set before the process starts, through the environment: glibc
# reads GLIBC_TUNABLES then, and a setting changed from inside a running process switches
# glibc's adaptive mmap threshold off for the rest of that process, whatever is set back
# afterwards (set at the start, it is off for the whole process: meant so). By default glibc
# gives back every large block when it is freed (a block past the mmap threshold is
# unmapped; the heap's top is trimmed once enough is free) and the next step's tensors of
# the same size fault it in again, page by page: on CPU, 8 of the default run's 20 s of
# training went so, in the kernel (4.6 million page faults; benchmarks/RESULTS.md,
# "Training: the kernel's page faults"). With these, every block comes from the heap (no
# mapping of its own), the heap grows 64 MiB at a time and is trimmed only past 2 GiB free.
# Only where memory comes from changes, not the arithmetic: the weights are the same bit for
# bit (tests/test_train.py). A process so started keeps up to 2 GiB of freed memory until it
# ends, so they go to processes that end with their work: the tasks kfp.local starts
# (pipelines/local.py), the image's processes but the MLflow server (infra/Dockerfile*,
# infra/k8s/mlflow.yaml), and `emoalign train | reproduce | audit`, which start again with
# them (pipelines/cli.py).
TRAINING_TUNABLES = {
    "glibc.malloc.mmap_max": "0",
    "glibc.malloc.trim_threshold": str(2**31 - 1),
    "glibc.malloc.top_pad": str(64 << 20),
}
# The settings that decide when freed memory goes back to the kernel, under both names glibc
# reads them by: the GLIBC_TUNABLES key and the older MALLOC_*_ variable.
RETURN_SETTINGS = {
    "glibc.malloc.mmap_max": "MALLOC_MMAP_MAX_",
    "glibc.malloc.mmap_threshold": "MALLOC_MMAP_THRESHOLD_",
    "glibc.malloc.trim_threshold": "MALLOC_TRIM_THRESHOLD_",
    "glibc.malloc.top_pad": "MALLOC_TOP_PAD_",
}


def tunables(environ: Mapping[str, str]) -> dict[str, str]:
    """GLIBC_TUNABLES of `environ`, key -> value (name=value pairs separated by colons)."""
    pairs = (item.partition("=") for item in environ.get("GLIBC_TUNABLES", "").split(":"))
    return {key: value for key, _, value in pairs if key}


def training_allocator(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables to add to `environ` (os.environ by default) so that a process started
    with it allocates as training wants (TRAINING_TUNABLES): {"GLIBC_TUNABLES": ...}, or
    {} where there is nothing to add.

    Nothing where the C library is not glibc (musl, macOS), and nothing where `environ`
    already sets any of RETURN_SETTINGS, by either name (the operator's, or ours, given
    before): those four settings together decide when memory goes back to the kernel, and
    setting any one of them fixes glibc's mmap threshold, so half of an operator's choice
    merged with half of ours would be a configuration nobody chose or measured; theirs is
    left whole. Their other tunables (glibc.cpu.*, glibc.malloc.arena_max, MALLOC_ARENA_MAX,
    ...) say nothing about that, and stay as they are, ours appended after them."""
    environ = os.environ if environ is None else environ
    if platform.libc_ver()[0] != "glibc":
        return {}
    given = tunables(environ)
    if any(key in given or alias in environ for key, alias in RETURN_SETTINGS.items()):
        return {}
    ours = ":".join(f"{key}={value}" for key, value in TRAINING_TUNABLES.items())
    theirs = environ.get("GLIBC_TUNABLES", "").strip(":")
    return {"GLIBC_TUNABLES": f"{theirs}:{ours}" if theirs else ours}


def startup_environment() -> Mapping[str, str]:
    """The environment glibc read its tunables from when this process started: Linux's
    /proc/self/environ, which a forked process shares with the interpreter it was forked
    from (pipelines/warm_server.py), whatever os.environ says now; os.environ elsewhere.
    (glibc 2.36 leaves only the first of GLIBC_TUNABLES' settings there once it has parsed
    them: enough to tell whether ours, or the operator's, were given.)"""
    try:
        raw = open("/proc/self/environ", "rb").read()
    except OSError:
        return os.environ
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {key.decode(errors="replace"): value.decode(errors="replace")
            for key, _, value in pairs}


@contextmanager
def training_allocator_for_subprocesses():
    """While inside: the processes this one starts (and that inherit its environment) get
    training_allocator()'s variables; os.environ is as it was afterwards. This process's own
    allocator is not changed (glibc read its tunables when it started)."""
    added = training_allocator()
    before = {name: os.environ.get(name) for name in added}
    os.environ.update(added)
    try:
        yield added
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


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
