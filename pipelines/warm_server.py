"""Processes forked from an interpreter that has the heavy libraries imported.

Starting Python and importing torch, MLflow, pandas, KFP and Great Expectations costs 3 to 6 s
of CPU; a local run starts a dozen task processes, and the tests hundreds of commands. The
server (`python -m pipelines.warm_server ADDRESS [MODULE...]`) imports those libraries once
(PRELOAD, third-party only), then for each request on its Unix socket forks a child that becomes
`python -m MODULE ARGV` with the request's environment, working folder and output files,
and answers with the child's exit status. The child imports the project's modules fresh, so
a module that reads the environment at import reads the request's; the request's
PYTHONPATH and a `sitecustomize` on it are taken as a new interpreter would take them.

Whoever starts a server owns it: it stops when its owner closes the pipe to its stdin
(the owner's exit does). A process whose EMOALIGN_WARM_SERVER names a running server's
address uses that one instead of starting its own (the tests start one per worker)."""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import runpy
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path

PRELOAD = ("numpy", "pandas", "pyarrow.parquet", "scipy.signal", "yaml", "pydantic",
           "sqlalchemy", "torch", "torchaudio", "mlflow", "mlflow.pyfunc", "mlflow.tracking",
           "kfp.dsl", "kfp.local", "kfp.compiler", "kfp.dsl.executor_main",
           "great_expectations")
ADDRESS_VARIABLE = "EMOALIGN_WARM_SERVER"
PROJECT_PACKAGES = ("pipelines", "components", "model", "corpora")


def run(address: str, module: str, argv: list[str], env: dict, cwd: str, stdout: str,
        stderr: str) -> int:
    """`python -m MODULE ARGV` forked by the server at `address`, its output in the files
    `stdout` and `stderr`; its exit code (negative: the signal that ended it)."""
    request = {"module": module, "argv": [str(a) for a in argv], "env": dict(env),
               "cwd": str(cwd), "stdout": str(stdout), "stderr": str(stderr)}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.connect(address)
        connection.sendall(json.dumps(request).encode() + b"\n")
        answer = connection.makefile("r").readline()
    if not answer:
        raise RuntimeError(f"the warm process server at {address} stopped")
    return json.loads(answer)["returncode"]


class Owned:
    """A server this process started; it stops when this process closes its stdin."""

    def __init__(self, env: dict | None = None, preload: tuple[str, ...] = PRELOAD):
        self.folder = tempfile.mkdtemp(prefix="emoalign-warm-")
        self.address = str(Path(self.folder, "server.sock"))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipelines.warm_server", self.address, *preload],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env=dict(os.environ if env is None else env),
            cwd=str(Path(__file__).resolve().parents[1]))
        # It says "listening" once bound, before its imports: requests wait in the backlog.
        if self.process.stdout.readline() != b"listening\n":
            raise RuntimeError("the warm process server did not start")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


_owned: Owned | None = None
_owned_lock = threading.Lock()
_cannot_start: str | None = None


def address() -> str | None:
    """EMOALIGN_WARM_SERVER's server, or one this process owns, started on the first call
    with this process's environment at that moment (kept for the process's life); None
    where none can start (the reason said once on stderr): the caller starts fresh."""
    global _owned, _cannot_start
    shared = os.environ.get(ADDRESS_VARIABLE)
    if shared:
        return shared
    with _owned_lock:
        if _cannot_start is None and (_owned is None or not _owned.alive()):
            try:
                _owned = Owned()
            except (OSError, RuntimeError) as e:
                _cannot_start = str(e)
                print(f"note: new processes start cold: the warm process server could not "
                      f"start ({e})", file=sys.stderr)
        return None if _cannot_start is not None else _owned.address


# ---- the server --------------------------------------------------------------------------

def _take_pythonpath(environ: dict) -> None:
    """What a new interpreter would make of the request's PYTHONPATH: its folders after the
    working folder, and a sitecustomize.py on them run."""
    folders = [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[1:1] = [p for p in folders if p not in sys.path]
    for folder in folders:
        path = Path(folder, "sitecustomize.py")
        if path.is_file():
            spec = importlib.util.spec_from_file_location("sitecustomize", path)
            sys.modules["sitecustomize"] = module = importlib.util.module_from_spec(spec)
            try:
                spec.loader.exec_module(module)
            except Exception as err:  # reported and passed over, as site.py does
                print("Error in sitecustomize; set PYTHONVERBOSE for traceback:\n"
                      f"{err.__class__.__name__}: {err}", file=sys.stderr)
            return


def _become(request: dict) -> None:
    """In the forked child: `python -m MODULE ARGV` as the request says; never returns."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        written = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, request["stdout"], written),
                                (2, request["stderr"], written)):
            if fd == 2 and path == request["stdout"]:
                os.dup2(1, 2)  # one file for both, as `2>&1` gives
                continue
            opened = os.open(path, flags, 0o644)
            os.dup2(opened, fd)
            os.close(opened)
        for name in [n for n in sys.modules if n.split(".")[0] in PROJECT_PACKAGES]:
            del sys.modules[name]  # the server's own start imported `pipelines`
        module = request["module"]
        sys.argv = ["-m", *request["argv"]]  # what `python -m` leaves before runpy's turn
        sys.orig_argv = [sys.executable, "-m", module, *request["argv"]]
        sys.path[0] = request["cwd"]  # `python -m` puts the working folder first
        _take_pythonpath(request["env"])
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:
                print(e.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve(address: str, preload: tuple[str, ...] = PRELOAD) -> None:
    """Listen at `address`, import `preload`, then fork a child per request until stdin
    closes. One thread: a selector over the listener, stdin and SIGCHLD's wake-up pipe."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(64)
    sys.stdout.write("listening\n")
    sys.stdout.flush()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is its owner's to handle
    for name in preload:
        __import__(name)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "request")
    selector.register(sys.stdin, selectors.EVENT_READ, "owner")
    selector.register(wake_read, selectors.EVENT_READ, "child")
    waiting: dict[int, socket.socket] = {}  # child's pid -> the connection to answer
    while True:
        for key, _ in selector.select():
            if key.data == "owner" and not os.read(sys.stdin.fileno(), 4096):
                listener.close()
                os.unlink(address)
                return
            if key.data == "request":
                connection, _ = listener.accept()
                request = json.loads(connection.makefile("r").readline())
                pid = os.fork()
                if pid == 0:
                    for other in (listener, connection, *waiting.values()):
                        other.close()
                    os.close(wake_read)
                    os.close(wake_write)
                    signal.set_wakeup_fd(-1)
                    _become(request)
                waiting[pid] = connection
            if key.data == "child":
                os.read(wake_read, 4096)
                while waiting:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                    if pid == 0:
                        break
                    connection = waiting.pop(pid, None)
                    if connection is not None:
                        answer = {"returncode": os.waitstatus_to_exitcode(status)}
                        try:
                            connection.sendall(json.dumps(answer).encode() + b"\n")
                        except OSError:
                            pass  # the one who asked has gone
                        connection.close()


if __name__ == "__main__":
    serve(sys.argv[1], tuple(sys.argv[2:]))
    try:
        os.rmdir(os.path.dirname(sys.argv[1]))  # Owned's folder, empty now
    except OSError:
        pass
    os._exit(0)  # the libraries' clean-up at shutdown would take seconds, for nothing
