"""kfp.local's task processes, forked from a warm interpreter instead of started cold.

kfp.local (SubprocessRunner) runs every task of the DAG as `sh -ec '<write the component's
source to a file>; python3 -m kfp.dsl.executor_main --component_module_path <file> "$@"'
<source> <args>`: a new interpreter per task, which imports torch, MLflow, pandas and Great
Expectations again (2 to 5 s of CPU each; a run has a dozen tasks). Here the same command
runs in a child of the warm process server (pipelines/warm_server.py), whose interpreter
imported those libraries once: the component's source is written to a file of its own, and
the child runs `kfp.dsl.executor_main` with the same arguments in the task's environment and
working folder. Each task is still a process of its own, with its own exit code; its output
reaches kfp.local's log as the subprocess's would.

Anything that is not that command goes to kfp.local's own subprocess, as does every task
when EMOALIGN_TASK_PROCESSES=fresh or where the server cannot start. Only the local runner
uses this: on a cluster each task is its own container."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from pipelines import warm_server

EXECUTOR = "kfp.dsl.executor_main"
SWITCH = "EMOALIGN_TASK_PROCESSES"  # "fresh": kfp.local's own subprocess for every task


def executor_call(full_command: list[str]) -> tuple[str, list[str]] | None:
    """(the component's source, the executor's arguments) of kfp.local's command for a
    lightweight component; None for anything else."""
    if len(full_command) < 4 or full_command[:2] != ["sh", "-ec"]:
        return None
    script = full_command[2]
    if f"-m {EXECUTOR}" not in script or '"$program_path/ephemeral_component.py"' not in script:
        return None
    return full_command[3], full_command[4:]


def run_forked(full_command: list[str], env_vars: dict | None = None, fresh=None) -> int:
    """kfp.local's run_local_subprocess, the task forked from the warm interpreter; its
    output printed as kfp.local prints a subprocess's."""
    call = executor_call(full_command)
    server = None if call is None or os.environ.get(SWITCH) == "fresh" else \
        warm_server.address()
    if server is None:
        return fresh(full_command, env_vars)
    source, arguments = call
    environ = {**os.environ, **(env_vars or {}), "_KFP_RUNTIME": "true"}
    with tempfile.TemporaryDirectory() as folder:
        module, log = Path(folder, "ephemeral_component.py"), Path(folder, "output")
        module.write_text(source)
        code = warm_server.run(server, EXECUTOR,
                               ["--component_module_path", str(module), *arguments],
                               environ, os.getcwd(), str(log), str(log))
        output = log.read_text(errors="replace") if log.is_file() else ""
    print(output, end="" if output.endswith("\n") or not output else "\n")
    print("\n")  # kfp.local's separation after a task's output
    return code


def warm_up_task_processes() -> None:
    """Start the warm server now, with the allocator settings the tasks train with, so that
    its imports overlap this process's work before the first task (unless tasks run fresh)."""
    from components import environment

    if os.environ.get(SWITCH) != "fresh":
        with environment.training_allocator_for_subprocesses():
            warm_server.address()


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
