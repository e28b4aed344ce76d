"""A server of fresh `emoalign` processes for the tests (conftest.emoalign): it imports the
heavy third-party libraries once (torch, MLflow, KFP, pandas, Great Expectations: about 7 s
of CPU), then forks a child per command, which runs `python -m pipelines.cli ARGS` in the
folder, environment and output files the request names. Each child is a process of its own
with its own exit code, imports the project's code fresh (modules that read the environment
at import read the child's), and leaves nothing behind in the server. Commands that restart
themselves with the training allocator (train, reproduce, audit) still do: the child's
command line is the real one, so their execve starts a brand-new interpreter as it would.

Protocol: one JSON request per line on stdin ({"argv", "env", "cwd", "stdout", "stderr"}),
one JSON answer per line on stdout ({"returncode"}). Started by conftest with
`python tests/cli_server.py`; it says "ready" once the libraries are imported."""

import atexit
import json
import os
import runpy
import sys
import traceback

# Only third-party libraries: importing the project here would fix, for every child, the
# values its modules read from the environment at import.
PRELOAD = ("numpy", "pandas", "pyarrow.parquet", "scipy.signal", "yaml", "pydantic",
           "sqlalchemy", "torch", "torchaudio", "mlflow", "mlflow.pyfunc", "mlflow.tracking",
           "kfp.dsl", "kfp.local", "kfp.compiler", "great_expectations")


def child(request: dict) -> None:
    """In the forked child: become `python -m pipelines.cli ARGV`; never returns."""
    code = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY),
                                (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
            opened = os.open(path, flags, 0o644)
            os.dup2(opened, fd)
            os.close(opened)
        sys.argv = ["-m", *request["argv"]]  # what `python -m` leaves in sys.argv
        sys.orig_argv = [sys.executable, "-m", "pipelines.cli", *request["argv"]]
        sys.path[0] = request["cwd"]  # `python -m` puts the working folder first
        try:
            runpy.run_module("pipelines.cli", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:
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


def main() -> None:
    for name in PRELOAD:
        __import__(name)
    answers = sys.stdout
    answers.write("ready\n")
    answers.flush()
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            child(request)
        _, status = os.waitpid(pid, 0)
        answers.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
        answers.flush()


if __name__ == "__main__":
    main()
