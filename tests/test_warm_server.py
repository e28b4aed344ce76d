"""The warm process server (pipelines/warm_server.py): each request becomes `python -m
MODULE ARGV` in a process of its own, as a new interpreter would run it."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from pipelines import warm_server

PROBE = """
import json, os, sys
print(json.dumps({"pid": os.getpid(), "cwd": os.getcwd(), "argv": sys.argv[1:],
                  "value": os.environ.get("PROBE_VALUE"),
                  "project_imported_before": PROJECT_BEFORE,
                  "customized": getattr(sys.modules.get("sitecustomize"), "MARK", None)}))
print("to stderr", file=sys.stderr)
if sys.argv[1:2] == ["exit"]:
    raise SystemExit(int(sys.argv[2]))
if sys.argv[1:2] == ["kill"]:
    os.kill(os.getpid(), 9)
if sys.argv[1:2] == ["sleep"]:
    import time
    time.sleep(float(sys.argv[2]))
"""


def _probe_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "code"
    folder.mkdir()
    # What a module sees of the project at its import: nothing, each child imports it fresh.
    (folder / "probe.py").write_text(
        "import sys\nPROJECT_BEFORE = sorted(n for n in sys.modules if n.split('.')[0] in "
        "('pipelines', 'components', 'model'))\n" + PROBE)
    return folder


def _run(tmp_path, *argv, env=None, name="out"):
    folder = tmp_path / "code"
    environ = {**os.environ, "PYTHONPATH": str(folder), **(env or {})}
    out, err = tmp_path / f"{name}.stdout", tmp_path / f"{name}.stderr"
    code = warm_server.run(os.environ[warm_server.ADDRESS_VARIABLE], "probe", list(argv),
                           environ, tmp_path, out, err)
    return code, out.read_text(), err.read_text()


def test_a_request_runs_as_a_new_interpreter_would(tmp_path):
    _probe_folder(tmp_path)
    (tmp_path / "code" / "sitecustomize.py").write_text("MARK = 'customized'\n")
    code, out, err = _run(tmp_path, "hello", "world", env={"PROBE_VALUE": "mine"})
    assert code == 0 and err == "to stderr\n"
    seen = json.loads(out)
    assert seen["pid"] != os.getpid() and seen["cwd"] == str(tmp_path)
    assert seen["argv"] == ["hello", "world"] and seen["value"] == "mine"
    assert seen["project_imported_before"] == []
    assert seen["customized"] == "customized"  # the request's PYTHONPATH's sitecustomize
    assert "PROBE_VALUE" not in os.environ


def test_exit_codes_are_the_childs_own(tmp_path):
    _probe_folder(tmp_path)
    assert _run(tmp_path, "exit", "3")[0] == 3
    assert _run(tmp_path, "kill")[0] == -9  # ended by a signal, as subprocess says it
    (tmp_path / "code" / "sitecustomize.py").write_text("raise ValueError('broken')\n")
    code, _, err = _run(tmp_path)  # a broken sitecustomize is reported and passed over
    assert code == 0 and "Error in sitecustomize" in err and "ValueError: broken" in err


def test_requests_at_once_run_at_once(tmp_path):
    _probe_folder(tmp_path)
    started = time.perf_counter()
    threads = [threading.Thread(target=_run, args=(tmp_path, "sleep", "1.5"),
                                kwargs={"name": f"t{i}"}) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert time.perf_counter() - started < 2.9
    assert all(json.loads((tmp_path / f"t{i}.stdout").read_text().splitlines()[0])
               for i in range(2))


def test_the_server_stops_when_its_owner_lets_go():
    server = warm_server.Owned(preload=("json",))
    assert Path(server.address).exists() and server.alive()
    server.stop()
    assert server.process.returncode == 0
    assert not Path(server.address).parent.exists()  # its socket and folder removed


def test_a_server_whose_owner_dies_goes_too():
    owner = subprocess.Popen(
        [sys.executable, "-c", "from pipelines import warm_server; import sys; "
         "s = warm_server.Owned(preload=('json',)); print(s.process.pid, flush=True); "
         "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    server_pid = int(owner.stdout.readline())
    owner.kill()
    owner.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{server_pid}").exists() and \
            "zombie" not in Path(f"/proc/{server_pid}/status").read_text():
        time.sleep(0.05)
    assert not Path(f"/proc/{server_pid}").exists() or \
        "zombie" in Path(f"/proc/{server_pid}/status").read_text()
