"""`emoalign` against MLflow on PostgreSQL with its artifacts in S3, and DVC on S3: the
services infra/k8s deploys, run on this machine (see conftest.py)."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from components.registry import LOCK_TAG
from conftest import SENTINELS, TINY, sets, sh

MODEL = "emoalign"


def _versions(stack) -> list[tuple[int, str]]:
    return stack.sql("SELECT version, run_id FROM model_versions WHERE name = %s "
                     "ORDER BY version", MODEL)


def _aliases(stack) -> dict[str, int]:
    return dict(stack.sql("SELECT alias, version FROM registered_model_aliases "
                          "WHERE name = %s", MODEL))


def _run(cli, corpus: Path, workdir: Path, summary: Path, **kwargs):
    return cli("run", "--corpus", corpus, "--workdir", workdir, "--summary-json", summary,
               *sets(TINY), **kwargs)


def _model_prefix(stack, version: int) -> str:
    """The S3 prefix under which the server stored a registered version's files."""
    client = MlflowClient(tracking_uri=stack.tracking_uri)
    source = client.get_model_version(MODEL, str(version)).source  # models:/m-<id>
    model_id = source.removeprefix("models:/")
    (location,) = stack.sql("SELECT artifact_location FROM logged_models WHERE model_id = %s",
                            model_id)[0]
    # mlflow-artifacts:/<experiment>/models/<id>/artifacts -> that key prefix in the bucket
    return location.removeprefix("mlflow-artifacts:/").strip("/") + "/"


@pytest.fixture(scope="module")
def first_run(cli, stack, corpus, tmp_path_factory):
    work = tmp_path_factory.mktemp("run1")
    done = _run(cli, corpus, work / "runs", work / "summary.json")
    assert done.returncode == 0, done.stderr + done.stdout[-3000:]
    return {"summary": json.loads((work / "summary.json").read_text()), "work": work,
            "output": done.stdout + done.stderr}


def _fault_then_rerun(cli, stack, corpus, work: Path, service: str) -> dict:
    """A run whose `service` (postgres or s3) stops when its register step starts, then,
    with the service back, the same run again."""
    before = _versions(stack)
    # The register step fails at once (or after MLflow's three quick HTTP retries), and
    # kfp retries it three times, here after 1 s, 2 s, 4 s (production waits 10, 20, 40 s:
    # tests/test_pipeline.py checks those; what is checked here is how a run that exhausts
    # its retries ends), so the run ends in well under a minute.
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "run", "--corpus", str(corpus), "--workdir",
         str(work / "runs"), *sets(TINY)], cwd=cli.cwd,
        env={**cli.env, "PYTHONUNBUFFERED": "1", "EMOALIGN_RETRY_BACKOFF_S": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stopped_at, seen = None, []
    try:
        for line in proc.stdout:
            seen.append(line)
            if stopped_at is None and "Executing task 'register'" in line:
                down = stack.script(service, "stop")
                assert down.returncode == 0, down.stderr
                stopped_at = time.monotonic()
        stderr = proc.stderr.read()
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        if stopped_at is not None:
            up = stack.script(service, "start")
            assert up.returncode == 0, up.stderr
    failed = {"returncode": proc.returncode, "stderr": stderr, "stdout": "".join(seen),
              "stopped": stopped_at is not None}
    after_fault = _versions(stack)
    done = _run(cli, corpus, work / "runs", work / "summary.json")
    assert done.returncode == 0, done.stderr + done.stdout[-3000:]
    return {"failed": failed, "before": before, "after_fault": after_fault,
            "after_rerun": _versions(stack),
            "summary": json.loads((work / "summary.json").read_text())}


@pytest.fixture(scope="module")
def fault_and_rerun(cli, stack, corpus, first_run, tmp_path_factory):
    """PostgreSQL stops when the register step starts."""
    return _fault_then_rerun(cli, stack, corpus, tmp_path_factory.mktemp("fault"), "postgres")


@pytest.fixture(scope="module")
def s3_fault_and_rerun(cli, stack, corpus, fault_and_rerun, tmp_path_factory):
    """The S3 endpoint stops when the register step starts (while it logs the model)."""
    return _fault_then_rerun(cli, stack, corpus, tmp_path_factory.mktemp("fault_s3"), "s3")


def _assert_one_line_naming(failed: dict, stack, *phrases: str) -> str:
    assert failed["stopped"], "the run never reached its register step:\n" + failed["stdout"]
    assert failed["returncode"] == 2, failed["stderr"] + failed["stdout"][-3000:]
    assert "Traceback" not in failed["stderr"]
    lines = failed["stderr"].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("emoalign: error: "), failed["stderr"]
    assert "'register'" in lines[0] and stack.server in lines[0], lines[0]
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    print(lines[0])  # what the user reads (pytest -rP shows it)
    return lines[0]


def _assert_rerun_registered_exactly_one(fault: dict, stack) -> None:
    before, after = fault["before"], fault["after_rerun"]
    assert len(after) == len(before) + 1
    new_version, run_id = after[-1]
    assert str(new_version) == fault["summary"]["model_version"]
    assert run_id == fault["summary"]["mlflow_run_id"]
    # Every version carries the gate's decision: none was left half-registered.
    decided = dict(stack.sql("SELECT version, value FROM model_version_tags WHERE name = %s "
                             "AND key = 'gate.decision'", MODEL))
    assert set(decided) == {v for v, _ in after}
    assert set(decided.values()) <= {"promoted", "rejected"}


# ---- a: the whole CLI through the server ------------------------------------------------

def test_run_registers_in_postgres_with_artifacts_in_s3(first_run, stack, cli):
    summary = first_run["summary"]
    assert summary["model_version"] == "1" and summary["promoted"]
    assert summary["tracking_uri"] == stack.tracking_uri
    assert f"tracking {stack.tracking_uri}" in first_run["output"]
    run_id = summary["mlflow_run_id"]
    # The registry's rows, straight from PostgreSQL.
    assert _versions(stack) == [(1, run_id)]
    assert _aliases(stack) == {"champion": 1, "challenger": 1}
    (status,) = stack.sql("SELECT status FROM runs WHERE run_uuid = %s", run_id)[0]
    assert status == "FINISHED"
    tags = dict(stack.sql("SELECT key, value FROM model_version_tags WHERE name = %s "
                          "AND version = 1", MODEL))
    assert tags["gate.decision"] == "promoted"
    assert tags["data_hash"] == summary["data_hash"]
    # The run's artifacts and the model's files are objects in the bucket...
    (experiment,) = stack.sql("SELECT experiment_id FROM runs WHERE run_uuid = %s", run_id)[0]
    run_objects = stack.objects("mlflow", f"{experiment}/{run_id}/artifacts/")
    for name in ("run/config.resolved.yaml", "run/pip_freeze.txt", "evaluate/metrics.json",
                 "validate/report.html"):
        assert f"{experiment}/{run_id}/artifacts/{name}" in run_objects
    model = stack.objects("mlflow", _model_prefix(stack, 1))
    assert any(k.endswith("/MLmodel") for k in model)
    assert any(k.endswith("/artifacts/session5-seed0.pt") for k in model)
    # ... and nowhere on this disk: no local artifact store beside any of the runs.
    for place in (cli.cwd, first_run["work"], stack.dir):
        strays = [p for name in ("mlruns", "mlartifacts", "mlflow.db")
                  for p in Path(place).rglob(name)]
        assert not strays, strays


def test_predict_loads_the_champion_from_s3(first_run, stack, cli, corpus):
    wav = sorted(corpus.glob("Session5/sentences/wav/*/*.wav"))[0]
    args = ("predict", "--wav", wav, "--text", "I can't believe you did that")
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    assert "emoalign version 1" in done.stdout and wav.name in done.stdout
    # Take the model's files out of the bucket: predict has nothing else to load them from.
    s3, prefix = stack.s3(), _model_prefix(stack, 1)
    saved = {key: s3.get_object(Bucket="mlflow", Key=key)["Body"].read()
             for key in stack.objects("mlflow", prefix)}
    assert saved
    try:
        for key in saved:
            s3.delete_object(Bucket="mlflow", Key=key)
        missing = cli(*args)
        assert missing.returncode != 0, missing.stdout
    finally:
        for key, body in saved.items():
            s3.put_object(Bucket="mlflow", Key=key, Body=body)
    again = cli(*args)
    assert again.returncode == 0, again.stderr
    assert again.stdout == done.stdout


def test_audit_rebuilds_the_registered_model_from_what_the_server_holds(first_run, cli,
                                                                       corpus, tmp_path):
    done = cli("audit", "models:/emoalign/1", "--corpus", corpus, "--workdir", tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    for check in ("code", "data", "config", "manifest", "environment", "metrics", "weights"):
        assert f"OK        {check}:" in done.stdout, done.stdout
    assert done.stdout.strip().splitlines()[-1].startswith("VERDICT: REPRODUCED: same code")


# ---- c: PostgreSQL stops in the middle of a run -----------------------------------------

def test_a_run_whose_database_dies_fails_in_one_line_and_registers_nothing(fault_and_rerun,
                                                                           stack):
    _assert_one_line_naming(fault_and_rerun["failed"], stack,
                            "answers, but its backend store fails (",
                            "is its database up?")
    # No version was registered, half or whole, while the database was down.
    assert fault_and_rerun["after_fault"] == fault_and_rerun["before"]


def test_after_postgres_restarts_a_rerun_registers_exactly_one_version(fault_and_rerun,
                                                                       stack):
    _assert_rerun_registered_exactly_one(fault_and_rerun, stack)


# ---- c: the S3 endpoint stops while the model is logged -----------------------------------

def test_a_run_whose_s3_dies_fails_in_one_line_and_registers_nothing(s3_fault_and_rerun,
                                                                     stack):
    line = _assert_one_line_naming(s3_fault_and_rerun["failed"], stack,
                                   "answers, but its artifact store fails (",
                                   "is its S3 endpoint up?", "nothing was registered")
    assert "could not store the model's files" in line or "could not read back" in line
    assert s3_fault_and_rerun["after_fault"] == s3_fault_and_rerun["before"]


def test_after_s3_restarts_a_rerun_registers_exactly_one_version_that_serves(
        s3_fault_and_rerun, stack, cli, corpus):
    _assert_rerun_registered_exactly_one(s3_fault_and_rerun, stack)
    # The new version's files are in S3 and it serves; so does the first one, whose files
    # lived through the S3 restart.
    wav = sorted(corpus.glob("Session5/sentences/wav/*/*.wav"))[0]
    for version in (1, s3_fault_and_rerun["after_rerun"][-1][0]):
        assert stack.objects("mlflow", _model_prefix(stack, version))
        done = cli("predict", "--model", f"models:/{MODEL}/{version}", "--wav", wav,
                   "--text", "fine")
        assert done.returncode == 0, done.stderr
        assert f"{MODEL} version {version}" in done.stdout, done.stdout


# ---- a (cont.): promote, rollback, history ----------------------------------------------

def test_promote_rollback_and_history_move_aliases_in_postgres(fault_and_rerun, stack, cli):
    champion = _aliases(stack)["champion"]
    other = 1 if champion != 1 else fault_and_rerun["after_rerun"][-1][0]
    assert other != champion
    done = cli("promote", "--version", other, "--reason", "e2e: by hand")
    assert done.returncode == 0, done.stderr
    assert _aliases(stack)["champion"] == other
    done = cli("rollback", "--reason", "e2e: changed my mind")
    assert done.returncode == 0, done.stderr
    assert f"champion {other} -> {champion}" in done.stdout
    assert _aliases(stack)["champion"] == champion
    history = cli("history", "--json")
    assert history.returncode == 0, history.stderr
    moves = [(e["action"], e["alias"], e["from"], e["to"])
             for e in json.loads(history.stdout) if e["alias"] == "champion"]
    assert moves[-2:] == [("manual", "champion", str(champion), str(other)),
                          ("rollback", "champion", str(other), str(champion))]
    assert moves[0] == ("auto", "champion", None, "1")
    shown = cli("history")
    assert "rollback" in shown.stdout and "e2e: changed my mind" in shown.stdout


# ---- c (cont.): two runs at once --------------------------------------------------------

def test_two_concurrent_runs_register_two_versions_one_champion_and_a_chained_history(
        fault_and_rerun, s3_fault_and_rerun, stack, cli, corpus, tmp_path):
    before = _versions(stack)
    procs = [subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "run", "--corpus", str(corpus), "--workdir",
         str(tmp_path / name / "runs"), "--summary-json", str(tmp_path / f"{name}.json"),
         *sets(TINY)], cwd=cli.cwd, env=cli.env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    outputs = [proc.communicate(timeout=900) for proc in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err + out[-3000:]
    summaries = [json.loads((tmp_path / f"{n}.json").read_text()) for n in ("a", "b")]
    after = _versions(stack)
    assert after[:len(before)] == before and len(after) == len(before) + 2
    assert sorted(str(v) for v, _ in after[len(before):]) == \
        sorted(s["model_version"] for s in summaries)
    # One champion, one challenger, each pointing at a registered version.
    aliases = _aliases(stack)
    assert set(aliases) == {"champion", "challenger"}
    assert {aliases["champion"], aliases["challenger"]} <= {v for v, _ in after}
    # The gates took turns: every move of an alias starts where the one before it ended.
    history = cli("history", "--json")
    assert history.returncode == 0, history.stderr
    entries = json.loads(history.stdout)
    for alias in ("champion", "challenger"):
        moves = [(e["from"], e["to"]) for e in entries if e["alias"] == alias]
        assert moves[0][0] is None
        for (_, previous_to), (next_from, _) in zip(moves, moves[1:]):
            assert next_from == previous_to, (alias, moves)
        assert moves[-1][1] == str(aliases[alias])
    new_versions = {str(v) for v, _ in after[len(before):]}
    assert new_versions <= {e["to"] for e in entries if e["alias"] == "challenger"}
    # The registered model's lock was released.
    assert not stack.sql("SELECT key FROM registered_model_tags WHERE name = %s AND key = %s",
                         MODEL, LOCK_TAG)


# ---- d: no credential anywhere MLflow keeps -----------------------------------------------

def test_no_credential_reaches_params_tags_artifacts_or_logs(first_run, fault_and_rerun,
                                                            s3_fault_and_rerun, stack):
    client = MlflowClient(tracking_uri=stack.tracking_uri)
    texts = {}
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            texts[f"run {run.info.run_id} params"] = json.dumps(run.data.params)
            texts[f"run {run.info.run_id} tags"] = json.dumps(run.data.tags)
    assert len(texts) >= 4  # two parents and their (fold, seed) children, at least
    model = client.get_registered_model(MODEL)
    texts["registered model"] = json.dumps(model.tags) + (model.description or "")
    for version in client.search_model_versions(f"name='{MODEL}'"):
        texts[f"version {version.version}"] = json.dumps(version.tags) + \
            (version.description or "")
    for work in (first_run["work"], *Path(first_run["work"]).parent.glob("fault*")):
        for log in Path(work).rglob("pipeline.log"):
            texts[str(log)] = log.read_text(errors="replace")
    for log in (stack.dir / "logs").iterdir():
        texts[str(log)] = log.read_text(errors="replace")
    for name, fault in (("postgres", fault_and_rerun), ("s3", s3_fault_and_rerun)):
        texts[f"output of the run whose {name} stopped"] = fault["failed"]["stdout"] + \
            fault["failed"]["stderr"]
    s3 = stack.s3()
    for key in stack.objects("mlflow"):
        texts[f"s3://mlflow/{key}"] = s3.get_object(Bucket="mlflow", Key=key)["Body"] \
            .read().decode("latin-1")
    assert sum(k.endswith("pipeline.log") for k in texts) >= 2
    leaks = [where for where, text in texts.items() for secret in SENTINELS if secret in text]
    assert not leaks, leaks


# ---- b: DVC with its remote on S3 --------------------------------------------------------

@pytest.fixture
def dvc_repo(stack, corpus, tmp_path, monkeypatch):
    """A git + DVC repository pinning the corpus at tag v1, pushed to s3://dvc/store."""
    for key, value in stack.env.items():
        monkeypatch.setenv(key, value)
    repo = tmp_path / "repo"
    repo.mkdir()
    dvc = [sys.executable, "-m", "dvc"]
    sh("git", "init", "-q", "-b", "main", cwd=repo)
    sh(*dvc, "init", "-q", cwd=repo)
    sh(*dvc, "config", "core.analytics", "false", cwd=repo)
    sh(*dvc, "remote", "add", "-d", "s3store", "s3://dvc/store", cwd=repo)
    sh(*dvc, "remote", "modify", "s3store", "endpointurl",
       stack.env["MLFLOW_S3_ENDPOINT_URL"], cwd=repo)
    shutil.copytree(corpus, repo / "data" / "IEMOCAP_full_release")
    sh(*dvc, "add", "-q", "data", cwd=repo)
    sh(*dvc, "push", "-q", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "corpus v1", cwd=repo)
    sh("git", "tag", "v1", cwd=repo)
    # Nothing local is left to read: a fetch must come from S3.
    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / ".dvc" / "cache")
    return repo


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_fetch_pulls_a_dvc_revision_from_s3(dvc_repo, stack, corpus, tmp_path):
    from components import fetch, lineage

    pinned = lineage.dvc_pointer_hash(dvc_repo / "data.dvc")
    blobs = [k for k in stack.objects("dvc", "store/files/md5/") if not k.endswith(".dir")]
    assert len(blobs) == len(_files(corpus))  # every file of the corpus, in the bucket
    folder, digest = fetch.run(str(tmp_path / "volume"), str(dvc_repo), "v1")
    assert digest == pinned == lineage.corpus_hash(corpus.parent)
    fetched = Path(folder) / "IEMOCAP_full_release"
    assert _files(fetched) == _files(corpus)
    # Objects gone from S3: the same revision can no longer be fetched, and says so.
    s3 = stack.s3()
    for key in blobs[:3]:
        s3.delete_object(Bucket="dvc", Key=key)
    with pytest.raises(fetch.FetchError, match="cannot fetch data at v1"):
        fetch.run(str(tmp_path / "volume2"), str(dvc_repo), "v1")
