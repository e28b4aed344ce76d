"""Run the emoalign DAG with Kubeflow's own local runner (kfp.local, no cluster, no Docker).

kfp.local prints every task's full executor log to stdout. We keep all of it in the run's
`pipeline.log` and show the user only the task status lines, plus a one-line reason and
the log's path when a task fails.
"""

from __future__ import annotations

import io
import re
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from components.errors import UserError

ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
STATUS_RE = re.compile(r"(Running pipeline|Executing task|finished with status|Retrying in)")
EXCEPTION_RE = re.compile(r"^\s*(?:[\w]+\.)*(\w*(?:Error|Exception)): (.+)$")


class PipelineFailed(UserError):
    """A task failed; the message names the task, the reason and the log."""


@dataclass
class LocalRun:
    run_dir: Path   # <pipeline_root>/<pipeline>-<timestamp>
    log_path: Path
    seconds: float

    def task_dir(self, task: str) -> Path:
        return self.run_dir / task


class _StatusTee(io.TextIOBase):
    """Everything to the log file; status lines also to the terminal."""

    def __init__(self, log, terminal, echo: bool):
        self.log, self.terminal, self.echo = log, terminal, echo
        self.pending = ""

    def write(self, text: str) -> int:
        self.log.write(ANSI_RE.sub("", text))
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            plain = ANSI_RE.sub("", line)
            if self.echo and STATUS_RE.search(plain) and not plain.startswith(" "):
                self.terminal.write("  " + plain.strip() + "\n")
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        self.terminal.flush()


@contextmanager
def _captured(log_path: Path, echo: bool):
    with open(log_path, "w") as log:
        stdout = sys.stdout
        sys.stdout = _StatusTee(log, stdout, echo)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stdout = stdout


def _failure_reason(log_text: str) -> tuple[str, str]:
    """(failed task, last exception line) from a kfp.local log."""
    task = "?"
    for m in re.finditer(r"Task '([^']+)' finished with status FAILURE", log_text):
        task = m.group(1)
    reason = "see the log"
    for line in log_text.splitlines():
        m = EXCEPTION_RE.match(line)
        if m:
            reason = f"{m.group(1)}: {m.group(2).strip()}"
    return task, reason


def run_pipeline(arguments: dict, pipeline_root: Path, echo: bool = True) -> LocalRun:
    """Execute the pipeline in this Python environment; return where its outputs are."""
    from kfp import local

    from pipelines.pipeline import PIPELINE_NAME, emoalign_pipeline

    pipeline_root = Path(pipeline_root).resolve()
    pipeline_root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root),
               raise_on_error=True)
    before = set(pipeline_root.iterdir())
    log_path = pipeline_root / f".{PIPELINE_NAME}-{time.time_ns()}.log"
    started = time.perf_counter()
    error = None
    with _captured(log_path, echo), warnings.catch_warnings():
        # The project image is the base image on purpose: locally it *is* this environment.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        # Resources, GPU, secrets, volumes are for the cluster (pipelines/cluster.py).
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner")
        try:
            emoalign_pipeline(**arguments)
        except RuntimeError as e:
            error = e
    seconds = time.perf_counter() - started
    new_dirs = sorted(p for p in set(pipeline_root.iterdir()) - before
                      if p.is_dir() and p.name.startswith(PIPELINE_NAME))
    run_dir = new_dirs[-1] if new_dirs else pipeline_root
    final_log = run_dir / "pipeline.log" if new_dirs else log_path
    log_path.replace(final_log)
    if error is not None:
        task, reason = _failure_reason(final_log.read_text())
        raise PipelineFailed(f"task '{task}' failed: {reason} (log: {final_log})")
    return LocalRun(run_dir=run_dir, log_path=final_log, seconds=seconds)
