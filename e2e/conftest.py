"""The production path on one machine, for real: PostgreSQL, an S3 server (moto) and
`mlflow server`, started by infra/stack.py in a scratch folder on free ports, and the
`emoalign` CLI run against them as a user would. No mocks.

`make e2e` runs this folder (`make test` does not: it only collects tests/), except
test_image.py, which builds the project image and runs only with --image (`make e2e-image`).
"""

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STACK_SCRIPT = ROOT / "infra" / "stack.py"
# Credentials no log, param or tag may ever show: the S3 secret (the server's and the
# clients') and an MLflow password the clients send.
S3_SECRET = f"e2e-s3-{secrets.token_hex(8)}"
MLFLOW_PASSWORD = f"e2e-pw-{secrets.token_hex(8)}"
SENTINELS = (S3_SECRET, MLFLOW_PASSWORD)
# Small, fast training; the gate's floor at 0 so the tiny model always registers.
TINY = ["train.epochs=3", "model.hidden=16", "model.embed_dim=16", "model.attention_dim=16",
        "model.frame_pool=10", "train.threads=1", "registry.ua_floor=0.0",
        "registry.bootstrap_samples=200"]
UTTERANCES = 200  # every class in every training fold
GIT_ENV = {"GIT_AUTHOR_NAME": "e2e", "GIT_AUTHOR_EMAIL": "e2e@example.org",
           "GIT_COMMITTER_NAME": "e2e", "GIT_COMMITTER_EMAIL": "e2e@example.org"}


def pytest_addoption(parser):
    parser.addoption("--image", action="store_true",
                     help="run test_image.py: build the project image with buildah and run the "
                          "pipeline in it (make e2e-image)")


def pytest_configure(config):
    config.addinivalue_line("markers", "image: builds and runs the project image (--image)")


def pytest_collection_modifyitems(config, items):
    """Without --image, the image tests are deselected (not skipped): `make e2e` runs the
    same tests as before they existed."""
    if config.getoption("--image"):
        return
    dropped = [item for item in items if item.get_closest_marker("image")]
    if dropped:
        items[:] = [item for item in items if not item.get_closest_marker("image")]
        config.hook.pytest_deselected(items=dropped)


def sh(*args, cwd=None, env=None, timeout=300) -> str:
    done = subprocess.run(list(map(str, args)), cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV, **(env or {})}, timeout=timeout)
    assert done.returncode == 0, f"{args}: {done.stderr}{done.stdout}"
    return done.stdout


def sets(overrides) -> list[str]:
    return sum((["--set", o] for o in overrides), [])


class Stack:
    """A running stack: its ports and URIs (stack.json), and the clients' environment."""

    def __init__(self, folder: Path):
        self.dir = folder
        self.state = json.loads((folder / "stack.json").read_text())
        self.env = {}
        for line in (folder / "env.sh").read_text().splitlines():
            if line.startswith("export "):
                key, _, value = line[len("export "):].partition("=")
                self.env[key] = value.strip("'")

    @property
    def tracking_uri(self) -> str:
        return self.env["MLFLOW_TRACKING_URI"]

    @property
    def server(self) -> str:
        return self.tracking_uri.removeprefix("http://")

    def script(self, *args) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(STACK_SCRIPT), *args, "--dir", str(self.dir)],
                              capture_output=True, text=True, timeout=300)

    def s3(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.env["MLFLOW_S3_ENDPOINT_URL"],
                            region_name=self.env["AWS_DEFAULT_REGION"],
                            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"])

    def objects(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                     Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def sql(self, query: str, *params) -> list[tuple]:
        """Rows straight from MLflow's PostgreSQL database."""
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.state["pg_port"], user="mlflow",
                                dbname="mlflow", connect_timeout=10)
        try:
            with conn.cursor() as cur:
                cur.execute(query, params)
                return cur.fetchall()
        finally:
            conn.close()


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stack")
    started = subprocess.run(
        [sys.executable, str(STACK_SCRIPT), "up", "--dir", str(folder), "--pg-port", "0",
         "--s3-port", "0", "--mlflow-port", "0"], capture_output=True, text=True, timeout=600,
        env={**os.environ, "STACK_AWS_SECRET_ACCESS_KEY": S3_SECRET})
    if started.returncode != 0:
        pytest.fail(f"infra/stack.py up failed: {started.stderr}{started.stdout}")
    running = Stack(folder)
    yield running
    stopped = running.script("down")
    assert stopped.returncode == 0, stopped.stderr


@pytest.fixture(scope="session")
def snapshot(tmp_path_factory) -> Path:
    """This working tree (tracked and untracked files, as git sees them) committed in a git
    repository of its own: `emoalign audit` checks and rebuilds committed code, and the runs
    here must not depend on edits made while they run."""
    tree = tmp_path_factory.mktemp("snapshot") / "emoalign"
    listed = sh("git", "-C", ROOT, "ls-files", "-z", "--cached", "--others",
                "--exclude-standard").split("\0")
    for rel in filter(None, listed):
        source = ROOT / rel
        if source.is_file():
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, tree / rel)
    sh("git", "init", "-q", "-b", "main", cwd=tree)
    sh("git", "add", "-A", cwd=tree)
    sh("git", "commit", "-qm", "snapshot of the tree under test", cwd=tree)
    return tree


@pytest.fixture(scope="session")
def cli(stack, snapshot):
    """`emoalign ARGS` from the snapshot, as a client of the stack with credentials set."""
    env = {**os.environ, **stack.env, "PYTHONPATH": str(snapshot),
           "MLFLOW_TRACKING_USERNAME": "e2e", "MLFLOW_TRACKING_PASSWORD": MLFLOW_PASSWORD}

    def run(*args, extra_env: dict | None = None, timeout: int = 600
            ) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipelines.cli", *map(str, args)],
                              cwd=snapshot, env={**env, **(extra_env or {})},
                              capture_output=True, text=True, timeout=timeout)

    run.env = env
    run.cwd = snapshot
    return run


@pytest.fixture(scope="session")
def corpus(tmp_path_factory, cli) -> Path:
    root = tmp_path_factory.mktemp("corpus") / "IEMOCAP_full_release"
    done = cli("sample-corpus", root, "--utterances", UTTERANCES, "--seed", 7)
    assert done.returncode == 0, done.stderr
    return root
