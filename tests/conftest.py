"""Shared fixtures: small generated corpora in the real IEMOCAP layout."""

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from corpora import sample_corpus

SMALL = 60  # utterances: every code at least once, every session, seconds to make


# Fixtures that take a whole pipeline run (or two) through kfp.local. A test reading one is
# `slow` (left out of `make test-fast`), and the tests sharing one run on the same xdist
# worker (`--dist loadgroup`), so each run is made once per `make test`, not once per worker.
WHOLE_RUN_FIXTURES = ("two_runs", "fanned_out")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups in its own hook
def pytest_collection_modifyitems(items):
    for item in items:
        shared = [name for name in WHOLE_RUN_FIXTURES if name in item.fixturenames]
        if shared:
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.xdist_group(shared[0]))


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """A pristine generated release root. Tests that break it must copy it first."""
    root = tmp_path_factory.mktemp("corpus") / "IEMOCAP_full_release"
    sample_corpus.generate(root, SMALL, seed=7)
    return root


@pytest.fixture
def corpus_copy(small_corpus, tmp_path) -> Path:
    """A copy of the small corpus this test may damage."""
    root = tmp_path / "IEMOCAP_full_release"
    shutil.copytree(small_corpus, root)
    return root


def truth_of(root: Path) -> dict:
    return json.loads((root / sample_corpus.TRUTH_FILENAME).read_text())


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An empty MLflow store with its schema made, once per worker: MLflow's migrations take
    about half a second on a brand-new SQLite store, and most tests never need to watch
    them. A brand-new store is still opened by every whole run (`two_runs`, `fanned_out`)
    and by tests/test_registry.py's processes opening one at once."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(autouse=True)
def tracking_store(tmp_path_factory, monkeypatch, empty_store) -> str:
    """Every test tracks into its own SQLite store (a copy of `empty_store`), never the
    project's runs/mlflow.db. Beside the test's tmp_path, not in it: tests check that a
    command wrote nothing to its folder."""
    store = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    shutil.copyfile(empty_store, store)
    uri = f"sqlite:///{store}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    return uri


@pytest.fixture(scope="session", autouse=True)
def warm_processes():
    """One warm process server per test worker (pipelines/warm_server.py), started at once
    so that its imports overlap the first tests: the CLI calls (emoalign()) and the pipeline
    tasks of every run, in this process or in a CLI call's, are forked from it. It starts
    with the training allocator's settings, as a run's own server would."""
    from components import environment
    from pipelines import warm_server

    server = warm_server.Owned({**os.environ, **environment.training_allocator()})
    previous = os.environ.get(warm_server.ADDRESS_VARIABLE)
    os.environ[warm_server.ADDRESS_VARIABLE] = server.address
    yield server
    if previous is None:
        del os.environ[warm_server.ADDRESS_VARIABLE]
    else:
        os.environ[warm_server.ADDRESS_VARIABLE] = previous
    server.stop()


def emoalign(*args, cwd=None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the installed CLI as a user would, in a process of its own: `python -m
    pipelines.cli ARGS`, forked from the worker's warm server with the third-party libraries
    imported, which saves each call seconds of imports. EMOALIGN_TEST_FRESH_CLI=1 starts a
    new interpreter for every call instead."""
    from pipelines import warm_server

    argv = [sys.executable, "-m", "pipelines.cli", *map(str, args)]
    environment = {**os.environ, **(env or {})}
    if os.environ.get("EMOALIGN_TEST_FRESH_CLI"):
        return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=environment)
    with tempfile.TemporaryDirectory() as scratch:
        out, err = Path(scratch, "stdout"), Path(scratch, "stderr")
        code = warm_server.run(os.environ[warm_server.ADDRESS_VARIABLE], "pipelines.cli",
                               argv[3:], environment, Path(cwd or os.getcwd()).resolve(),
                               out, err)
        return subprocess.CompletedProcess(argv, code, out.read_text(), err.read_text())


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("emoalign: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# Small, fast model settings for tests that train (a few seconds per model on one thread).
TINY = ["train.epochs=3", "model.hidden=16", "model.embed_dim=16", "model.attention_dim=16",
        "model.frame_pool=10", "train.threads=1"]


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> dict[str, Path]:
    """A 200-utterance corpus taken through ingest, validate and features (every class in
    every training fold), for the tests that train and evaluate."""
    from components import features, ingest, validate
    from components.config import load_config

    work = tmp_path_factory.mktemp("prepared")
    corpus = work / "IEMOCAP_full_release"
    sample_corpus.generate(corpus, 200, seed=7)
    config = load_config()
    ingest.run(corpus, work / "ingest")
    validate.run(work / "ingest", work / "validated", config.ingest.classes, config.validate)
    features.run(work / "validated", work / "store", config.features)
    return {"corpus": corpus, "validated": work / "validated", "store": work / "store"}


SENTINEL = "s3nt1nel-Secret-Value"  # a credential in the environment: never to be stored
WEBHOOK_TOKEN = "w3bh00k-T0ken-In-The-Path"  # EMOALIGN_WEBHOOK_URL's: never to be stored either


class _RecordingHook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((self.path, json.loads(body)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def recording_webhook() -> http.server.ThreadingHTTPServer:
    """A webhook on 127.0.0.1 keeping (path, JSON body) of every POST in `.received`."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RecordingHook)
    server.received = []
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server
GATE = TINY + ["registry.ua_floor=0.0", "registry.bootstrap_samples=200"]


def relabel(corpus: Path, old: str, new: str, share: float) -> int:
    """Turn `share` of the `old` label lines of every session into `new`; how many."""
    changed = 0
    for path in sorted(corpus.glob("Session*/dialog/EmoEvaluation/*.txt")):
        lines = path.read_text().splitlines(keepends=True)
        hits = [i for i, line in enumerate(lines) if re.match(rf"\[.*\]\t\S+\t{old}\t", line)]
        for i in hits[:round(len(hits) * share)]:
            lines[i] = lines[i].replace(f"\t{old}\t", f"\t{new}\t", 1)
            changed += 1
        path.write_text("".join(lines))
    return changed


def dvc_add(repo: Path, folder: Path) -> str:
    """`dvc add` the corpus and commit its pointer; the md5 the pointer records."""
    from components import lineage

    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-C", str(repo)]
    if not (repo / ".dvc").is_dir():
        subprocess.run(["git", "init", "-q", str(repo)], check=True)
        subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "add", "-q", folder.name], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", f"data {folder.name}"], check=True)
    return lineage.dvc_pointer_hash(repo / f"{folder.name}.dvc")


@pytest.fixture(scope="session")  # kept while other modules' tests run on this worker
def two_runs(prepared, tmp_path_factory) -> dict:
    """Two pipeline runs into one registry, for every test that reads a whole run: what
    they printed, their summaries, their files, the registry after them.

    The first is `emoalign run` on the prepared corpus (version 1, the champion). The second
    is what a schedule does with a new version of the data: `emoalign retrain` on a v2
    tracked by DVC (more utterances, another draw of the generator, a fifth of the neutral
    utterances relabelled angry), which trains because the data changed and has its class
    shares judged against the champion's data (tests/test_data_versions.py). Both report
    their end to a webhook whose URL, with a token in its path, comes from the environment."""
    from mlflow import MlflowClient

    work = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    hook = recording_webhook()
    env = {"MLFLOW_TRACKING_URI": uri, "AWS_SECRET_ACCESS_KEY": SENTINEL,
           "MLFLOW_TRACKING_PASSWORD": SENTINEL + "2",
           "EMOALIGN_WEBHOOK_URL": f"http://127.0.0.1:{hook.server_port}/hook/{WEBHOOK_TOKEN}"}
    second = work / "v2" / "data" / "IEMOCAP_full_release"
    sample_corpus.generate(second, 240, seed=7)
    assert relabel(second, "neu", "ang", 0.2) > 0
    second_dvc_hash = dvc_add(second.parents[1], second.parent)  # as data.dvc tracks data/
    summaries, stdouts, stderrs, settings = [], [], [], []
    for n, (command, corpus) in enumerate((("run", prepared["corpus"]), ("retrain", second))):
        path = work / f"summary{n}.json"
        # The retrain is promoted whatever its tiny model scores (tolerance 1), so that the
        # champion's move carries the new data's drift into the history.
        gate = GATE + [f"seed={n}"] + (["registry.tolerance=1.0"] if n else [])
        settings.append(gate)
        overrides = sum((["--set", o] for o in gate), [])
        result = emoalign(command, "--corpus", corpus, "--workdir", work / "runs",
                          "--summary-json", path, *overrides, env=env)
        assert result.returncode == 0, result.stderr + result.stdout[-3000:]
        summaries.append(json.loads(path.read_text()))
        stdouts.append(result.stdout)
        stderrs.append(result.stderr)
    hook.shutdown()
    hook.server_close()
    # Later commands of other tests use this env: the webhook has stopped answering.
    env = {k: v for k, v in env.items() if k != "EMOALIGN_WEBHOOK_URL"}
    return {"uri": uri, "env": env, "work": work, "summaries": summaries, "stdouts": stdouts,
            "stderrs": stderrs, "settings": settings, "webhook_posts": hook.received,
            "corpora": [prepared["corpus"], second], "second_dvc_hash": second_dvc_hash,
            "client": MlflowClient(tracking_uri=uri, registry_uri=uri)}
