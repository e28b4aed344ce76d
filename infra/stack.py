"""The production stack of infra/k8s, on one machine: PostgreSQL 15 (MLflow's backend store),
an S3 endpoint (moto's standalone server standing in for MinIO or S3: buckets `mlflow` and
`dvc`) and `mlflow server` on both, all on 127.0.0.1, their files and logs in one folder.

    python infra/stack.py up   [--dir runs/stack] [--pg-port N] [--s3-port N] [--mlflow-port N]
    python infra/stack.py down [--dir runs/stack]
    python infra/stack.py postgres|s3 stop|start [--dir runs/stack]   (fault drills)

`up` writes DIR/env.sh (what a client needs: MLFLOW_TRACKING_URI, MLFLOW_S3_ENDPOINT_URL,
AWS_*) and DIR/stack.json (ports, pids, paths). A port of 0 means any free port. Each stack
starts empty: moto keeps its objects in memory, so a registry kept across stacks would point
at artifacts that are gone. For the same reason `s3 stop` saves every object to DIR/s3-saved
before it stops moto, and `s3 start` puts them back, as MinIO or S3 would have kept them.
Every failure is one line naming the service and its log.

Only the Python standard library, except boto3 for creating the buckets (`make stack`
installs requirements-e2e.txt first).
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_DIR = "runs/stack"
PORTS = {"pg": 55432, "s3": 59000, "mlflow": 55000}  # defaults; 0 picks a free port
BUCKETS = ("mlflow", "dvc")  # what infra/k8s's minio-buckets job creates
PG_VERSION = "15"
PG_USER = "postgres"  # PostgreSQL refuses to run as root
START_TIMEOUT_S = {"postgres": 60, "s3": 60, "mlflow": 180}
LOCAL_ONLY_KEY = ("emoalign-local", "emoalign-local-secret")  # moto accepts any credentials


class StackError(Exception):
    """One line for the user: what failed and which log says why."""


@dataclass
class Stack:
    dir: str
    pg_port: int
    s3_port: int
    mlflow_port: int
    pg_bin: str
    pg_home: str          # owned by the PostgreSQL user: data/, sock/, postgres.log
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    pids: dict = field(default_factory=dict)  # service -> pid (each leads its process group)

    @property
    def pg_data(self) -> Path:
        return Path(self.pg_home) / "data"

    @property
    def pg_log(self) -> Path:
        return Path(self.pg_home) / "postgres.log"

    def log(self, service: str) -> Path:
        return Path(self.dir) / "logs" / f"{service}.log"

    @property
    def backend_store_uri(self) -> str:
        # postgresql:// alone means psycopg 3 to SQLAlchemy 2.1; the server ships psycopg2.
        return f"postgresql+psycopg2://mlflow@127.0.0.1:{self.pg_port}/mlflow"

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    def client_env(self) -> dict[str, str]:
        return {"MLFLOW_TRACKING_URI": self.tracking_uri,
                "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
                "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": self.region,
                "MLFLOW_DISABLE_TELEMETRY": "true"}

    def state_file(self) -> Path:
        return Path(self.dir) / "stack.json"

    def save(self) -> None:
        self.state_file().write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, folder: Path) -> Stack | None:
        path = Path(folder) / "stack.json"
        return cls(**json.loads(path.read_text())) if path.is_file() else None


# ---- processes and ports ------------------------------------------------------------------

def _as_pg_user() -> dict:
    """subprocess arguments that run a command as the unprivileged PostgreSQL user (when we
    are root; otherwise as ourselves)."""
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam(PG_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [],
            "env": {**os.environ, "HOME": entry.pw_dir, "USER": PG_USER, "LOGNAME": PG_USER}}


def _run(cmd: list[str], what: str, log: Path | None = None, **kwargs) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          **kwargs)
    if done.returncode != 0:
        detail = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        where = f"; see {log}" if log else ""
        raise StackError(f"{what} failed (exit {done.returncode}): {detail}{where}")
    return done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_port_free(port: int, service: str, variable: str) -> None:
    with socket.socket() as s:
        # As the servers themselves bind: connections of a service just stopped, still in
        # TIME_WAIT for a minute, do not keep it from starting again; a listener does.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise StackError(f"port {port} for {service} is busy on 127.0.0.1: stop what "
                             f"uses it, or pick another with {variable}=N (0: any free port)"
                             ) from None


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own child that exited) is not alive.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return True


MARKERS = {"s3": b"moto_server", "mlflow": b"mlflow"}  # in each service's command line


def _ours(service: str, pid: int | None) -> bool:
    """Whether `pid` is still the service we started (not a pid reused since)."""
    if not _alive(pid):
        return False
    try:
        return MARKERS[service] in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _spawn(cmd: list[str], log: Path, env: dict) -> int:
    """Start a service in its own session (it outlives `make stack`), output to its log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    return proc.pid


def _stop_group(pid: int, name: str, timeout_s: float = 20) -> None:
    """SIGTERM the process group a service leads, then SIGKILL what is left."""
    if not _alive(pid):
        return
    for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap(pid)
            if not _alive(pid):
                return
            time.sleep(0.2)
    raise StackError(f"{name} (pid {pid}) did not stop")


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _wait_until(check, service: str, pid: int | None, log: Path, timeout_s: float) -> None:
    """Poll `check()` until it is true; a service that exits or times out is a StackError
    naming its log."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pid is not None:
            _reap(pid)
            if not _alive(pid):
                raise StackError(f"{service} exited while starting: {_last_line(log)}; "
                                 f"see {log}")
        if check():
            return
        time.sleep(0.5)
    raise StackError(f"{service} did not come up within {timeout_s:.0f} s; see {log}")


def _last_line(log: Path) -> str:
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines()
                 if line.strip()]
    except OSError:
        return "no log"
    errors = [line for line in lines if "Error" in line or "FATAL" in line]
    return ((errors or lines or ["no output"])[-1])[:300]


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


# ---- PostgreSQL ---------------------------------------------------------------------------

def pg_bin() -> Path:
    """PostgreSQL's server binaries, installed from Debian's `postgresql` when missing."""
    found = _find_pg_bin()
    if found is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise StackError("PostgreSQL server binaries not found under /usr/lib/postgresql: "
                             "install the Debian package postgresql (15)")
        print("installing PostgreSQL (apt-get install postgresql) ...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        _run(["apt-get", "update", "-qq"], "apt-get update", env=env)
        _run(["apt-get", "install", "-y", "-qq", "postgresql"], "apt-get install postgresql",
             env=env)
        found = _find_pg_bin()
        if found is None:
            raise StackError("apt-get installed postgresql but no initdb is under "
                             "/usr/lib/postgresql/*/bin")
    return found


def _find_pg_bin() -> Path | None:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                        key=lambda p: (p.parent.parent.name != PG_VERSION,
                                       -int(p.parent.parent.name)
                                       if p.parent.parent.name.isdigit() else 0))
    return candidates[0].parent if candidates else None


def _ensure_pg_user() -> None:
    if os.geteuid() != 0:
        return
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        _run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
              PG_USER], f"creating the system user {PG_USER}")


def _pg_home(stack_dir: Path) -> Path:
    """Where PostgreSQL keeps its files: DIR/postgres when the PostgreSQL user can reach DIR,
    else a private folder under the system temp dir (pytest's tmp dirs are root-only)."""
    preferred = stack_dir / "postgres"
    if os.geteuid() == 0:
        reachable = subprocess.run(["test", "-x", str(stack_dir)], **_as_pg_user(),
                                   cwd="/").returncode == 0
        if not reachable:
            preferred = Path(tempfile.mkdtemp(prefix="emoalign-stack-pg-"))
    preferred.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        entry = pwd.getpwnam(PG_USER)
        os.chown(preferred, entry.pw_uid, entry.pw_gid)
        preferred.chmod(0o700)
    return preferred


def _init_postgres(stack: Stack) -> None:
    sock = Path(stack.pg_home) / "sock"
    if len(str(sock)) > 90:
        raise StackError(f"{sock} is too long for a Unix socket path: use a shorter --dir")
    as_pg = {**_as_pg_user(), "cwd": stack.pg_home}
    _run([f"{stack.pg_bin}/initdb", "-D", str(stack.pg_data), "-A", "trust", "-U", "mlflow",
          "-E", "UTF8", "--locale=C", "--no-sync"], "initdb", **as_pg)
    sock.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        entry = pwd.getpwnam(PG_USER)
        os.chown(sock, entry.pw_uid, entry.pw_gid)


def start_postgres(stack: Stack) -> None:
    _check_port_free(stack.pg_port, "PostgreSQL", "STACK_PG_PORT")
    sock = Path(stack.pg_home) / "sock"
    options = f"-p {stack.pg_port} -k {shlex.quote(str(sock))} -c listen_addresses=127.0.0.1"
    _run([f"{stack.pg_bin}/pg_ctl", "-D", str(stack.pg_data), "-l", str(stack.pg_log),
          "-w", "-t", str(START_TIMEOUT_S["postgres"]), "-o", options, "start"],
         "PostgreSQL (pg_ctl start)", log=stack.pg_log, **_as_pg_user(), cwd=stack.pg_home)


def stop_postgres(stack: Stack) -> None:
    if not (stack.pg_data / "postmaster.pid").exists():
        return
    _run([f"{stack.pg_bin}/pg_ctl", "-D", str(stack.pg_data), "-m", "fast", "-w", "-t", "60",
          "stop"], "PostgreSQL (pg_ctl stop)", log=stack.pg_log, **_as_pg_user(),
         cwd=stack.pg_home)


def _create_database(stack: Stack) -> None:
    _run([f"{stack.pg_bin}/createdb", "-h", "127.0.0.1", "-p", str(stack.pg_port),
          "-U", "mlflow", "mlflow"], "createdb mlflow", log=stack.pg_log)


# ---- S3 (moto) and MLflow -----------------------------------------------------------------

def _venv_tool(name: str) -> str:
    tool = Path(sys.executable).parent / name
    if not tool.exists():
        raise StackError(f"{tool} not found: install requirements-e2e.txt into this "
                         "environment (make stack does)")
    return str(tool)


def start_s3(stack: Stack, env: dict) -> None:
    _check_port_free(stack.s3_port, "the S3 server (moto)", "STACK_S3_PORT")
    log = stack.log("s3")
    stack.pids["s3"] = _spawn([_venv_tool("moto_server"), "-H", "127.0.0.1",
                               "-p", str(stack.s3_port)], log, env)
    _wait_until(lambda: _http_ok(f"{stack.s3_endpoint}/moto-api/"), "the S3 server (moto)",
                stack.pids["s3"], log, START_TIMEOUT_S["s3"])
    s3 = _s3_client(stack)
    for bucket in BUCKETS:
        s3.create_bucket(Bucket=bucket)


def _s3_client(stack: Stack):
    try:
        import boto3
    except ImportError:
        raise StackError("boto3 is not installed: install requirements-e2e.txt") from None
    return boto3.client("s3", endpoint_url=stack.s3_endpoint, region_name=stack.region,
                        aws_access_key_id=stack.access_key,
                        aws_secret_access_key=stack.secret_key)


def stop_s3(stack: Stack) -> int:
    """Save every object to DIR/s3-saved (moto would lose them), then stop moto; the number
    of objects saved."""
    saved = Path(stack.dir) / "s3-saved"
    shutil.rmtree(saved, ignore_errors=True)
    s3, count = _s3_client(stack), 0
    for bucket in BUCKETS:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                target = saved / bucket / item["Key"]
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket, item["Key"], str(target))
                count += 1
    if _ours("s3", stack.pids.get("s3")):
        _stop_group(stack.pids["s3"], "the S3 server (moto)")
    stack.pids.pop("s3", None)
    stack.save()
    return count


def restart_s3(stack: Stack) -> int:
    """Start moto again on its port and put back what `stop_s3` saved; the objects restored."""
    env = {**os.environ, **stack.client_env()}
    env.pop("MLFLOW_TRACKING_URI")
    start_s3(stack, env)
    stack.save()
    saved, s3, count = Path(stack.dir) / "s3-saved", _s3_client(stack), 0
    for path in sorted(p for p in saved.rglob("*") if p.is_file()):
        bucket, *key = path.relative_to(saved).parts
        s3.upload_file(str(path), bucket, "/".join(key))
        count += 1
    shutil.rmtree(saved, ignore_errors=True)
    return count


def start_mlflow(stack: Stack, env: dict) -> None:
    _check_port_free(stack.mlflow_port, "the MLflow server", "STACK_MLFLOW_PORT")
    log = stack.log("mlflow")
    stack.pids["mlflow"] = _spawn(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
         "--port", str(stack.mlflow_port), "--workers", "2",
         "--backend-store-uri", stack.backend_store_uri,
         "--artifacts-destination", "s3://mlflow", "--serve-artifacts"],
        # No job runner: its consumers serve GenAI jobs this project does not use.
        log, {**env, "MLFLOW_S3_ENDPOINT_URL": stack.s3_endpoint,
              "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    # Up means the database answers through it, not only that it listens.
    _wait_until(lambda: _http_ok(f"{stack.tracking_uri}/api/2.0/mlflow/experiments/search"
                                 "?max_results=1"),
                "the MLflow server", stack.pids["mlflow"], log, START_TIMEOUT_S["mlflow"])


# ---- up / down ----------------------------------------------------------------------------

def _port(value: str | None, default: int) -> int:
    port = int(value) if value not in (None, "") else default
    return port or free_port()


def up(folder: Path, ports: dict[str, str | None]) -> Stack:
    folder = folder.resolve()
    old = Stack.load(folder)
    if old is not None and any(_ours(name, p) for name, p in old.pids.items()):
        raise StackError(f"a stack is already running from {folder} "
                         f"(MLflow at {old.tracking_uri}): stop it first (make stack-down)")
    if old is not None:
        _teardown(old, quiet=True)  # what a crashed stack left
    chosen = {name: _port(ports.get(name), default) for name, default in PORTS.items()}
    for name, service in (("pg", "PostgreSQL"), ("s3", "the S3 server (moto)"),
                          ("mlflow", "the MLflow server")):
        _check_port_free(chosen[name], service, f"STACK_{name.upper()}_PORT")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "logs").mkdir(exist_ok=True)
    binaries = pg_bin()
    _ensure_pg_user()
    for leftover in ("postgres", "s3-saved"):  # each stack starts empty
        shutil.rmtree(folder / leftover, ignore_errors=True)
    stack = Stack(dir=str(folder), pg_port=chosen["pg"], s3_port=chosen["s3"],
                  mlflow_port=chosen["mlflow"], pg_bin=str(binaries),
                  pg_home=str(_pg_home(folder)),
                  access_key=os.environ.get("STACK_AWS_ACCESS_KEY_ID") or LOCAL_ONLY_KEY[0],
                  secret_key=os.environ.get("STACK_AWS_SECRET_ACCESS_KEY") or LOCAL_ONLY_KEY[1])
    if stack.pg_log != stack.log("postgres"):
        stack.log("postgres").unlink(missing_ok=True)
        stack.log("postgres").symlink_to(stack.pg_log)
    env = {**os.environ, **stack.client_env(),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("MLFLOW_TRACKING_URI")  # the server's own store is its command line's
    try:
        _init_postgres(stack)
        start_postgres(stack)
        stack.save()
        _create_database(stack)
        start_s3(stack, env)
        stack.save()
        start_mlflow(stack, env)
        stack.save()
    except BaseException:
        _teardown(stack, quiet=True)
        raise
    write_env(stack)
    return stack


def write_env(stack: Stack) -> Path:
    path = Path(stack.dir) / "env.sh"
    lines = ["# What a client of the local stack (infra/stack.py) needs: source this file.",
             *(f"export {k}={shlex.quote(v)}" for k, v in stack.client_env().items()),
             f"# PostgreSQL (MLflow's store): psql -h 127.0.0.1 -p {stack.pg_port} -U mlflow "
             "mlflow", ""]
    path.write_text("\n".join(lines))
    path.chmod(0o600)
    return path


def _teardown(stack: Stack, quiet: bool = False) -> list[str]:
    """Stop every service of `stack` (MLflow first, PostgreSQL last); what failed to stop."""
    problems = []
    for service in ("mlflow", "s3"):
        if not _ours(service, stack.pids.get(service)):
            continue
        try:
            _stop_group(stack.pids[service], service)
        except StackError as e:
            problems.append(str(e))
    try:
        stop_postgres(stack)
    except StackError as e:
        problems.append(str(e))
    if Path(stack.pg_home).parent != Path(stack.dir) and not problems:
        shutil.rmtree(stack.pg_home, ignore_errors=True)  # the temp-dir fallback
    stack.pids = {}
    if stack.state_file().exists():
        stack.state_file().unlink()
    if problems and not quiet:
        raise StackError("; ".join(problems))
    return problems


def down(folder: Path) -> bool:
    stack = Stack.load(folder.resolve())
    if stack is None:
        return False
    _teardown(stack)
    (Path(stack.dir) / "env.sh").unlink(missing_ok=True)
    return True


# ---- command line -------------------------------------------------------------------------

def _service(folder: Path, service: str, action: str | None) -> str:
    """Stop or start one service of a running stack (fault drills); what was done."""
    stack = Stack.load(folder.resolve())
    if stack is None or action is None:
        raise StackError(f"no stack in {folder}" if stack is None
                         else f"{service} needs stop or start")
    if service == "postgres":
        (stop_postgres if action == "stop" else start_postgres)(stack)
        return f"PostgreSQL {action}{'ped' if action == 'stop' else 'ed'}"
    if action == "stop":
        return f"the S3 server stopped ({stop_s3(stack)} objects saved)"
    return f"the S3 server started ({restart_s3(stack)} objects restored)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infra/stack.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "postgres", "s3"])
    parser.add_argument("action", nargs="?", choices=["stop", "start"],
                        help="with `postgres` or `s3`: stop or start that service alone")
    parser.add_argument("--dir", default=os.environ.get("STACK_DIR") or DEFAULT_DIR)
    for name in PORTS:
        parser.add_argument(f"--{name}-port",
                            default=os.environ.get(f"STACK_{name.upper()}_PORT"))
    args = parser.parse_args(argv)
    folder = Path(args.dir)
    try:
        if args.command == "up":
            stack = up(folder, {"pg": args.pg_port, "s3": args.s3_port,
                                "mlflow": args.mlflow_port})
            print(f"PostgreSQL 127.0.0.1:{stack.pg_port}, S3 {stack.s3_endpoint} (buckets "
                  f"{', '.join(BUCKETS)}), MLflow {stack.tracking_uri}; logs in "
                  f"{Path(stack.dir) / 'logs'}")
            print(f"use it:  source {Path(stack.dir) / 'env.sh'}")
        elif args.command == "down":
            print(f"stopped the stack in {folder}" if down(folder)
                  else f"no stack running from {folder}")
        else:
            print(_service(folder, args.command, args.action))
    except StackError as e:
        print(f"stack: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
