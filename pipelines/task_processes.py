"""kfp.local's task processes, forked from a warm interpreter instead of started cold.

kfp.local (SubprocessRunner) runs every task of the DAG as `sh -ec '<write the component's
source to a file>; python3 -m kfp.dsl.executor_main --component_module_path <file> "$@"'
<source> <args>`: a new interpreter per task, which imports torch, MLflow, pandas and Great
Expectations again (2 to 5 s of CPU each; a run has a dozen tasks). Here the same command
runs in a child of multiprocessing's fork server, whose interpreter imported those libraries
once (TASK_LIBRARIES): the child writes the source to a file of its own, takes the task's
environment and working folder, and runs `kfp.dsl.executor_main` with the same arguments.
Each task is still a process of its own, with its own exit code; its output reaches
kfp.local's log as the subprocess's would. The project's own modules are imported fresh in
every child (the fork server imports none), so a module that reads the environment at import
reads the task's.

Anything that is not that command goes to kfp.local's own subprocess, as does every task
when EMOALIGN_TASK_PROCESSES=fresh. Only the local runner uses this: on a cluster each task
is its own container."""

from __future__ import annotations

import atexit
import multiprocessing
import os
import runpy
import sys
import tempfile
import threading
import traceback
from contextlib import contextmanager
from pathlib import Path

# Third-party only (the project's modules stay fresh per task); what the tasks import.
TASK_LIBRARIES = ("numpy", "pandas", "pyarrow.parquet", "yaml", "pydantic", "sqlalchemy",
                  "torch", "torchaudio", "mlflow", "mlflow.pyfunc", "mlflow.tracking",
                  "great_expectations", "kfp.dsl.executor_main")
EXECUTOR = "kfp.dsl.executor_main"
SWITCH = "EMOALIGN_TASK_PROCESSES"  # "fresh": kfp.local's own subprocess for every task

_context_lock = threading.Lock()
_context = None


def _fork_server():
    """The fork server's context, its libraries named for preloading: started on the first
    task with this process's environment (the training allocator's settings included, as
    run_pipeline sets them), kept for the process' life."""
    global _context
    with _context_lock:
        if _context is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(list(TASK_LIBRARIES))
            _context = context
        return _context


def executor_call(full_command: list[str]) -> tuple[str, list[str]] | None:
    """(the component's source, the executor's arguments) of kfp.local's command for a
    lightweight component; None for anything else."""
    if len(full_command) < 4 or full_command[:2] != ["sh", "-ec"]:
        return None
    script = full_command[2]
    if f"-m {EXECUTOR}" not in script or '"$program_path/ephemeral_component.py"' not in script:
        return None
    return full_command[3], full_command[4:]


def _run_task(source: str, arguments: list[str], environ: dict, cwd: str, log: str) -> None:
    """In the forked child: `python3 -m kfp.dsl.executor_main` on the component's source,
    its output to `log`; exits with the executor's code."""
    code = 1
    try:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(environ)
        opened = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for fd in (1, 2):
            os.dup2(opened, fd)
        os.close(opened)
        folder = tempfile.mkdtemp()
        module = Path(folder, "ephemeral_component.py")
        module.write_text(source)
        sys.argv = [EXECUTOR, "--component_module_path", str(module), *arguments]
        sys.path[0] = cwd  # as `python3 -m` has it
        try:
            runpy.run_module(EXECUTOR, run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if not isinstance(e.code, (int, type(None))):
                print(e.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
    finally:
        try:
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def run_forked(full_command: list[str], env_vars: dict | None = None, fresh=None) -> int:
    """kfp.local's run_local_subprocess, the task forked from the warm interpreter; its
    output printed as kfp.local prints a subprocess's."""
    call = executor_call(full_command)
    if call is None or os.environ.get(SWITCH) == "fresh":
        return fresh(full_command, env_vars)
    source, arguments = call
    environ = {**os.environ, **(env_vars or {}), "_KFP_RUNTIME": "true"}
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder, "output")
        task = _fork_server().Process(target=_run_task, args=(source, arguments, environ,
                                                               os.getcwd(), str(log)))
        task.start()
        task.join()
        output = log.read_text(errors="replace") if log.is_file() else ""
    print(output, end="" if output.endswith("\n") or not output else "\n")
    print("\n")  # kfp.local's separation after a task's output
    return task.exitcode if task.exitcode is not None else 1


@contextmanager
def forked_tasks():
    """While inside, kfp.local's SubprocessRunner tasks run forked (run_forked)."""
    from kfp.local import subprocess_task_handler as handler

    fresh = handler.run_local_subprocess
    handler.run_local_subprocess = lambda full_command, env_vars=None: run_forked(
        full_command, env_vars, fresh)
    try:
        yield
    finally:
        handler.run_local_subprocess = fresh
