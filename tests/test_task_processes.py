"""kfp.local's tasks forked from a warm interpreter (pipelines/task_processes.py): the same
command kfp.local would start, run with the task's environment, arguments, exit code and
output, in a process of its own."""

import json
import os

from kfp.local import subprocess_task_handler

from pipelines import kfp_components, task_processes

PROBE = '''
from kfp import dsl


@dsl.component
def probe(tag: str) -> str:
    import json
    import os
    import sys

    if tag == "fail":
        raise ValueError("the probe was told to fail")
    with open(os.environ["PROBE_FILE"], "w") as f:
        json.dump({"pid": os.getpid(), "cwd": os.getcwd(), "tag": tag,
                   "warm": "torch" in sys.modules, "kfp_runtime": os.environ["_KFP_RUNTIME"]},
                  f)
    return tag + "!"
'''


def kfp_command(tmp_path, tag: str) -> list[str]:
    """What kfp.local's SubprocessRunner runs for the probe, as it builds it for any
    lightweight component (the plan step's shell script, this source, the executor's
    arguments)."""
    script = kfp_components.plan.component_spec.implementation.container.command[2]
    executor_input = {
        "inputs": {"parameterValues": {"tag": tag}},
        "outputs": {"parameters": {"Output": {"outputFile": str(tmp_path / "Output")}},
                    "outputFile": str(tmp_path / "executor_output.json")}}
    return ["sh", "-ec", script, PROBE, "--executor_input", json.dumps(executor_input),
            "--function_to_execute", "probe"]


def test_a_task_runs_forked_with_its_environment_arguments_and_outputs(tmp_path, monkeypatch,
                                                                       capsys):
    monkeypatch.chdir(tmp_path)
    command = kfp_command(tmp_path, "hello")
    assert task_processes.executor_call(command) == (PROBE, command[4:])

    def not_this_way(*_):
        raise AssertionError("ran as a fresh subprocess")

    code = task_processes.run_forked(command, {"PROBE_FILE": str(tmp_path / "probe.json")},
                                     not_this_way)
    assert code == 0
    seen = json.loads((tmp_path / "probe.json").read_text())
    assert seen["tag"] == "hello" and seen["cwd"] == str(tmp_path)
    assert seen["pid"] != os.getpid() and seen["kfp_runtime"] == "true"
    assert seen["warm"]  # torch was there before the task imported anything
    written = json.loads((tmp_path / "executor_output.json").read_text())
    assert written["parameterValues"]["Output"] == "hello!"
    assert "PROBE_FILE" not in os.environ  # the task's environment stayed the task's
    assert "Got executor_input" in capsys.readouterr().out  # its log, as kfp.local prints it


def test_a_failing_task_exits_non_zero_with_its_exception_in_the_log(tmp_path, capsys):
    code = task_processes.run_forked(kfp_command(tmp_path, "fail"), {}, None)
    assert code == 1
    assert "ValueError: the probe was told to fail" in capsys.readouterr().out


def test_anything_else_and_the_switch_go_to_kfp_locals_own_subprocess(tmp_path, monkeypatch):
    ran = []

    def fresh(full_command, env_vars=None):
        ran.append(full_command)
        return 7

    assert task_processes.run_forked(["sh", "-c", "true"], {}, fresh) == 7
    monkeypatch.setenv(task_processes.SWITCH, "fresh")
    command = kfp_command(tmp_path, "hello")
    assert task_processes.run_forked(command, {}, fresh) == 7
    assert ran == [["sh", "-c", "true"], command]


def test_forked_tasks_replaces_kfp_locals_runner_only_while_inside():
    before = subprocess_task_handler.run_local_subprocess
    with task_processes.forked_tasks():
        assert subprocess_task_handler.run_local_subprocess is not before
    assert subprocess_task_handler.run_local_subprocess is before


def test_where_no_warm_server_can_start_tasks_start_fresh(tmp_path, monkeypatch, capsys):
    from pipelines import warm_server

    def cannot(*_, **__):
        raise OSError("AF_UNIX path too long")

    monkeypatch.delenv(warm_server.ADDRESS_VARIABLE)
    monkeypatch.setattr(warm_server, "_owned", None)
    monkeypatch.setattr(warm_server, "_cannot_start", None)
    monkeypatch.setattr(warm_server, "Owned", cannot)
    ran = []
    command = kfp_command(tmp_path, "hello")
    for _ in range(2):
        assert task_processes.run_forked(command, {}, lambda c, e=None: ran.append(c) or 0) == 0
    assert ran == [command, command]
    said = capsys.readouterr().err
    assert said.count("warm process server could not start (AF_UNIX path too long)") == 1
