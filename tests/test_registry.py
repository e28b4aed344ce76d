"""MLflow tracking, the registry's aliases, the promotion gate, history, predict and audit,
against a real SQLite-backed store (and a real `mlflow server` over HTTP)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from components import environment, lineage, registry
from components.config import Config, load_config
from components.lineage import Lineage
from components.outputs import StepOutputs
from conftest import GATE, SENTINEL, WEBHOOK_TOKEN, assert_one_line_error, emoalign
from model.metrics import scores, unweighted_accuracy

def _sets(overrides):
    return sum((["--set", o] for o in overrides), [])


def test_each_run_is_tracked_with_config_metrics_artifacts_and_lineage(two_runs):
    client, first = two_runs["client"], two_runs["summaries"][0]
    run = client.get_run(first["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == first["pipeline_run"]
    params = run.data.params
    assert params["model.kind"] == "align" and params["train.epochs"] == "3"
    assert params["ingest.classes"] == "neutral,happy,angry,sad"
    assert run.data.metrics["evaluate/ua"] == pytest.approx(first["ua"])
    assert run.data.metrics["evaluate/wa"] == pytest.approx(first["wa"])
    alignment = StepOutputs.of_pipeline_run(Path(first["run_dir"])).evaluation.metrics()[
        "attention_alignment"]
    for key in ("lift", "prior_lift", "lift_over_prior"):  # the prior's work beside training's
        assert run.data.metrics[f"evaluate/attention_{key}"] == pytest.approx(alignment[key])
    # The (fold, seed) model is a nested run holding its scores and learning curves.
    (child,) = client.search_runs([run.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert child.info.run_name == "session5-seed0" and child.data.params["seed"] == "0"
    assert child.data.metrics["evaluate/ua"] == pytest.approx(first["ua"])
    losses = client.get_metric_history(child.info.run_id, "train/loss")
    assert [m.step for m in losses] == [1, 2, 3]
    tags = run.data.tags
    assert tags["data_hash"] == first["data_hash"] == lineage.release_hash(
        two_runs["corpora"][0])
    assert tags["git_sha"] == (first["git_sha"] or "unknown")
    assert tags["config_sha256"] == first["config_sha256"]
    assert tags["seed"] == "0" and tags["pipeline_run"] == first["pipeline_run"]
    manifest = Path(first["run_dir"]) / "ingest" / "manifest" / "manifest.parquet"
    assert tags["manifest_sha256"] == lineage.file_sha256(manifest)
    assert tags["validation"].startswith("passed")
    # The model code's identity, as the track task's process imported it.
    assert lineage.code_identity().tags() == {k: tags[k] for k in ("code_sha256",
                                                                  "code_files")}
    artifacts = {a.path for folder in ("run", "validate", "evaluate", "ingest")
                 for a in client.list_artifacts(run.info.run_id, folder)}
    for expected in ("run/config.resolved.yaml", "run/pip_freeze.txt",
                     "validate/quarantine.csv", "validate/report.html",
                     "validate/gx_result.json", "validate/stats.json",
                     "evaluate/metrics.json", "evaluate/confusion.png",
                     "evaluate/learning_curves.png", "ingest/ingest_report.json"):
        assert expected in artifacts
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.digest == first["data_hash"][:36]
    assert dataset.tags[0].value == "training"


def test_versions_aliases_and_the_gate_numbers_agree_with_the_summaries(two_runs):
    client = two_runs["client"]
    first, second = two_runs["summaries"]
    assert (first["model_version"], second["model_version"]) == ("1", "2")
    assert first["promoted"] and first["champion_version"] == "1"
    model = client.get_registered_model("emoalign")
    assert str(model.aliases["challenger"]) == "2"
    assert str(model.aliases["champion"]) == second["champion_version"]
    assert second["champion_version"] == ("2" if second["promoted"] else "1")

    v2 = client.get_model_version("emoalign", "2")
    assert v2.tags["data_hash"] == second["data_hash"] != first["data_hash"]
    assert v2.tags["gate.decision"] == ("promoted" if second["promoted"] else "rejected")
    numbers = json.loads(v2.tags["gate.numbers"])
    assert numbers["champion_version"] == "1" and numbers["n_test"] == second["n_test"]
    low, high = numbers["delta_ua_ci95"]
    assert low <= numbers["delta_ua"] <= high
    assert numbers["delta_ua"] == pytest.approx(numbers["ua"] - numbers["champion_ua"],
                                                abs=1e-5)
    assert second["promoted"] == (numbers["delta_ua"] >= -numbers["tolerance"])
    # The champion was re-scored now, on the challenger's test utterances.
    predictions = Path(second["run_dir"]) / "summarize" / "evaluation" / "predictions.csv"
    assert numbers["n_test"] == sum(1 for _ in predictions.open()) - 1
    assert json.loads(v2.tags["gate.infra_check"])["ok"] is True
    assert "champion" in v2.description


def test_history_records_every_alias_move_consistently(two_runs):
    history = registry.read_history(two_runs["client"], "emoalign")
    champion_moves = [e for e in history if e["alias"] == "champion"]
    assert champion_moves[0]["from"] is None and champion_moves[0]["to"] == "1"
    assert champion_moves[0]["action"] == "auto" and "floor" in champion_moves[0]["reason"]
    for before, after in zip(champion_moves, champion_moves[1:]):
        assert after["from"] == before["to"]
    challenger_moves = [e for e in history if e["alias"] == "challenger"]
    assert [e["to"] for e in challenger_moves] == ["1", "2"]
    shown = emoalign("history", env=two_runs["env"])
    assert shown.returncode == 0 and shown.stdout.count("challenger") == 2


def test_retrain_stops_early_when_nothing_changed_since_the_champion(two_runs, tmp_path,
                                                                    monkeypatch):
    """`emoalign retrain` with the champion's own data, model code and settings answers
    "nothing to retrain" without starting the pipeline (the check step's question, asked in
    its own process), from another work directory and with uncommitted changes too (the
    code identity is the model files' bytes, not the commit); a change to the data or a
    setting that shapes the model is a reason to train, named (the check step's answer,
    asked directly: what a whole run does with it is every other run's test)."""
    sha, dirty = lineage.code_version()
    client, summaries = two_runs["client"], two_runs["summaries"]
    champion = client.get_model_version_by_alias("emoalign", "champion").tags
    assert champion["code_sha256"] == lineage.code_identity().sha256
    (n,) = [i for i, s in enumerate(summaries) if (s["data_hash"], s["config_sha256"]) ==
            (champion["data_hash"], champion["config_sha256"])]
    again = emoalign("retrain", "--corpus", two_runs["corpora"][n], "--workdir",
                     tmp_path / "elsewhere", "--summary-json", tmp_path / "again.json",
                     *_sets(GATE + [f"seed={n}", "train.threads=2"]), env=two_runs["env"])
    assert again.returncode == 0, again.stderr
    assert "nothing to retrain" in again.stdout
    assert "Executing task" not in again.stdout  # kfp.local was not started
    summary = json.loads((tmp_path / "again.json").read_text())
    assert summary["retrained"] is False
    # Its record: the check's decision where the check task writes it, and why.
    record = Path(summary["run_dir"])
    assert (record / "check" / "decision").read_text().startswith("# No retrain\n")
    assert "the pipeline was not started" in (record / "pipeline.log").read_text()

    monkeypatch.setenv("MLFLOW_TRACKING_URI", two_runs["uri"])
    same = Lineage(str(two_runs["corpora"][n]), summaries[n]["data_hash"], sha, dirty)
    config, other_seed = (load_config(None, GATE + [f"seed={seed}"]) for seed in (n, 3))
    assert registry.retrain_reason(config, same) is None
    assert registry.retrain_reason(other_seed, same) == f"config changed: seed {n} -> 3"
    other_data = Lineage(same.corpus, "0" * 32 + ".dir", sha, dirty)
    assert registry.retrain_reason(config, other_data) == \
        f"data changed: {same.data_hash} -> {other_data.data_hash}"
    another_commit = Lineage(same.corpus, same.data_hash, "f" * 40, not dirty)
    assert registry.retrain_reason(config, another_commit) is None


class _Started(Exception):
    """Raised where `emoalign retrain` would start the pipeline: what it built is kept."""


def _what_retrain_builds(monkeypatch, args: list, sha: str, dirty: bool = False) -> dict:
    """The config, lineage and force `emoalign retrain ARGS` (cmd_run) hands the local
    runner, at commit `sha`; nothing is started."""
    from pipelines import cli, local

    built = {}

    def start(config, run_lineage, workdir, force=True):
        built.update(config=config, lineage=run_lineage, force=force)
        raise _Started

    monkeypatch.setattr(lineage, "code_version", lambda: (sha, dirty))
    monkeypatch.setattr(local, "run_local_pipeline", start)
    with pytest.raises(_Started):
        cli.main(["retrain", *map(str, args)])
    return built


def _champion_from(built: dict, code: lineage.CodeIdentity | None = None,
                   data_hash: str | None = None) -> str:
    """A champion as a pipeline run leaves one: an MLflow run holding the config as its
    params and the lineage as its tags (what tracking logs), and a version tagged like it
    (what registration copies), aliased champion. `code` / `data_hash`: what it was
    trained from instead of this checkout's code / the built lineage's data."""
    import mlflow

    from components.registry.store import ensure_experiment
    from components.registry.tracking import config_params, lineage_tags

    config, seen = built["config"], built["lineage"]
    if data_hash is not None:
        seen = Lineage(seen.corpus, data_hash, seen.git_sha, seen.git_dirty)
    tags = lineage_tags(seen, config, "0" * 64, "passed")
    tags.update(code.tags() if code is not None else {})
    client = registry.connect()
    with mlflow.start_run(experiment_id=ensure_experiment(client, config.registry.experiment),
                          tags=tags) as run:
        mlflow.log_params(config_params(config))
    name = config.registry.model_name
    if not client.search_registered_models(f"name='{name}'"):
        client.create_registered_model(name)
    version = client.create_model_version(name, f"runs:/{run.info.run_id}/model",
                                          run.info.run_id, tags=tags).version
    client.set_registered_model_alias(name, "champion", version)
    return version


def _both_askers(built: dict, folder: Path) -> tuple[tuple, tuple]:
    """(retrain, reason) from `emoalign retrain`'s own question (check.run, as the local
    runner asks it) and from the pipeline's check task, fed what its fetch task outputs
    for the arguments `emoalign retrain` submits (pipeline.py's wiring)."""
    import inspect

    from kfp import dsl

    from components import check
    from pipelines import kfp_components
    from pipelines.arguments import pipeline_arguments
    from pipelines.pipeline import emoalign_pipeline

    config, seen, force = built["config"], built["lineage"], built["force"]
    in_process = check.run(config, seen, force)
    arguments = pipeline_arguments(config, seen.corpus, seen, force=force,
                                   champion_reference=registry.champion_reference(
                                       config.registry.model_name))
    defaults = inspect.signature(emoalign_pipeline.pipeline_func).parameters
    fetched = kfp_components.fetch.python_func(**{
        name: arguments.get(name, defaults[name].default)
        for name in inspect.signature(kfp_components.fetch.python_func).parameters})
    decision = dsl.Markdown(name="decision", uri=str(folder / "decision"))
    retrain = kfp_components.check.python_func(
        config_yaml=fetched.config_yaml, corpus=fetched.corpus, data_hash=fetched.data_hash,
        git_sha=fetched.git_sha, git_dirty=fetched.git_dirty, force=arguments["force"],
        decision=decision)
    assert Path(decision.path).read_text().endswith(f"\n{decision.metadata['reason']}\n")
    return (in_process.retrain, in_process.reason), (retrain, decision.metadata["reason"])


SHA = "a" * 40  # the champion's commit; a later one that changed no model file: SHA_README
SHA_README = "b" * 40
OPERATIONAL = ["--set", "train.threads=1", "--set", "notify.webhook=http://127.0.0.1:9/hook",
               "--set", "validate.workers=1", "--set", "features.workers=2",
               "--set", "train.parallelism=1", "--set", "registry.tolerance=0.05"]


@pytest.mark.parametrize("case", ["nothing changed", "a commit changing README.md alone",
                                  "operational keys and another workdir", "train.lr",
                                  "a model file", "the data"])
def test_the_check_task_and_emoalign_retrain_ask_one_decision(case, small_corpus,
                                                              monkeypatch, tmp_path):
    """Both askers of the check's question get what they are really given (the config and
    lineage `emoalign retrain` builds; the outputs of the fetch task it submits them to)
    and read a real registry, whose champion was logged and registered as a run does it;
    they answer alike, and name what changed: only the data, the model's code and the
    settings that shape a model count."""
    from components import check

    base = ["--corpus", small_corpus, "--workdir", tmp_path / "runs"]
    champion_built = _what_retrain_builds(monkeypatch, base, SHA)
    assert champion_built["force"] is False
    data = champion_built["lineage"].data_hash
    code = lineage.code_identity()
    older_network = lineage.CodeIdentity({**code.files, "model/network.py": "0" * 64})
    _champion_from(champion_built, code=older_network if case == "a model file" else None,
                   data_hash="0" * 32 + ".dir" if case == "the data" else None)

    args, sha, expected = base, SHA, check.NOTHING_TO_RETRAIN
    if case == "a commit changing README.md alone":
        sha = SHA_README
    elif case == "operational keys and another workdir":
        args = ["--corpus", small_corpus, "--workdir", tmp_path / "elsewhere", *OPERATIONAL]
    elif case == "train.lr":
        args, expected = [*base, "--set", "train.lr=0.002"], \
            "config changed: train.lr 0.003 -> 0.002"
    elif case == "a model file":
        expected = "code changed: model/network.py"
    elif case == "the data":
        expected = f"data changed: {'0' * 32}.dir -> {data}"
    built = _what_retrain_builds(monkeypatch, args, sha)
    in_process, check_task = _both_askers(built, tmp_path)
    assert in_process == check_task == (expected != check.NOTHING_TO_RETRAIN, expected)


def test_the_check_task_writes_the_decision_down_and_forced_asks_nothing(monkeypatch,
                                                                         tmp_path):
    """Forced, the registry is not asked; the check task returns the decision's bool and
    writes its reason and Markdown."""
    from kfp import dsl

    from components import check
    from pipelines import kfp_components

    monkeypatch.setattr(registry, "retrain_reason", lambda *a: pytest.fail("asked"))
    config, seen = Config(), Lineage("corpus", "0" * 32 + ".dir", "abc", False)
    assert check.run(config, seen, force=True) == check.Decision(True, check.FORCED)
    decision = dsl.Markdown(name="decision", uri=str(tmp_path / "decision"))
    assert kfp_components.check.python_func(
        config_yaml=config.to_yaml(), corpus=seen.corpus, data_hash=seen.data_hash,
        git_sha=seen.git_sha, git_dirty=seen.git_dirty, force=True, decision=decision)
    assert decision.metadata["reason"] == check.FORCED
    assert Path(decision.path).read_text() == f"# Retrain\n\n{check.FORCED}\n"


def test_a_champion_from_before_the_code_identity_retrains_naming_its_commit(monkeypatch):
    from components.registry.registration import retrain_reason

    config, seen = Config(), Lineage("corpus", "0" * 32 + ".dir", SHA, False)
    version = _champion_from({"config": config, "lineage": seen})
    client = registry.connect()
    for tag in ("code_sha256", "code_files"):
        client.delete_model_version_tag("emoalign", version, tag)
    assert retrain_reason(config, seen) == (f"code changed: champion version {version} "
                                            f"(commit {SHA[:12]}) predates the code identity")


def test_a_key_added_since_the_champion_counts_as_unchanged_at_its_default():
    """The champion's run did not log a key this code has: at its default it changed
    nothing; set otherwise, it did. Every difference is named."""
    from components.registry.registration import changed_settings
    from components.registry.tracking import config_params

    logged = config_params(Config())
    del logged["model.max_words"], logged["train.unimodal_loss"]
    assert changed_settings(Config(), logged) == []
    config = load_config(None, ["model.max_words=20", "model.alignment_prior=0",
                                "train.lr=0.001", "train.threads=3"])
    assert changed_settings(config, logged) == ["model.alignment_prior 0.05 -> 0.0",
                                                "model.max_words 0 -> 20",
                                                "train.lr 0.003 -> 0.001"]


def test_no_champion_only_when_there_is_no_model_or_no_alias(monkeypatch, small_corpus,
                                                             tmp_path, capsys):
    """"No champion yet" means the registered model does not exist (MLflow's
    RESOURCE_DOES_NOT_EXIST) or has no champion alias; any other failure to read the
    registry is one line naming the store, and `emoalign retrain` trains nothing."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, RESOURCE_DOES_NOT_EXIST

    from components.registry.registration import retrain_reason
    from pipelines import cli, local

    config, seen = Config(), Lineage("corpus", "0" * 32 + ".dir", SHA, False)
    assert retrain_reason(config, seen) == \
        "no champion yet: there is no registered model 'emoalign'"
    registry.connect().create_registered_model("emoalign")
    assert retrain_reason(config, seen) == \
        "no champion yet: registered model 'emoalign' has no 'champion' alias"

    def failing(code):
        def get_registered_model(self, name):
            raise MlflowException(f"Registered Model with name={name} not found"
                                  if code == RESOURCE_DOES_NOT_EXIST else
                                  "(sqlite3.OperationalError) database is locked\n[SQL: ...]",
                                  error_code=code)
        return get_registered_model

    monkeypatch.setattr(MlflowClient, "get_registered_model", failing(RESOURCE_DOES_NOT_EXIST))
    assert retrain_reason(config, seen).startswith("no champion yet: ")
    monkeypatch.setattr(MlflowClient, "get_registered_model", failing(INTERNAL_ERROR))
    with pytest.raises(registry.RegistryError) as raised:
        retrain_reason(config, seen)
    message = str(raised.value)
    assert "\n" not in message and registry.tracking_uri() in message
    assert "database is locked" in message and "nothing was trained" in message

    monkeypatch.setattr(local, "run_pipeline", lambda *a, **k: pytest.fail("started"))
    capsys.readouterr()
    assert cli.main(["retrain", "--corpus", str(small_corpus), "--workdir",
                     str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0] == f"emoalign: error: {message}"


def test_promote_by_hand_rollback_and_their_history(two_runs, tmp_path):
    env = two_runs["env"]
    client = two_runs["client"]
    current = str(client.get_registered_model("emoalign").aliases["champion"])
    other = "1" if current == "2" else "2"
    result = emoalign("promote", "--version", other, "--reason", "listening test", env=env)
    assert result.returncode == 0, result.stderr
    assert str(client.get_registered_model("emoalign").aliases["champion"]) == other
    result = emoalign("rollback", "--reason", "complaints", env=env)
    assert result.returncode == 0, result.stderr
    assert str(client.get_registered_model("emoalign").aliases["champion"]) == current
    last_two = registry.read_history(client, "emoalign")[-2:]
    assert [(e["action"], e["from"], e["to"]) for e in last_two] == [
        ("manual", current, other), ("rollback", other, current)]
    assert last_two[0]["reason"] == "listening test" and last_two[0]["who"]
    assert_one_line_error(emoalign("promote", "--version", "99", "--reason", "x", env=env),
                          "has no version 99")


def test_predict_scores_wav_and_text_with_the_champion(two_runs, tmp_path):
    env = two_runs["env"]
    run_dir = Path(two_runs["summaries"][0]["run_dir"])
    predictions = (run_dir / "summarize" / "evaluation" / "predictions.csv").read_text()
    header, *rows = predictions.splitlines()
    utt_ids = [r.split(",")[0] for r in rows[:3]]
    wavs = {p.stem: p for p in two_runs["corpora"][0].glob("Session5/sentences/wav/*/*.wav")}
    # Who speaks reaches the model: a speaker it knows is normalised with their own
    # statistics, not the global ones (IEMOCAP: Ses05F_impro01_M000 is Ses05M speaking).
    speaker = utt_ids[0][:5] + utt_ids[0].rsplit("_", 1)[1][0]
    # The third request has no transcript: the recogniser gives the words, and says so. The
    # last two are one utterance, said by anyone (global statistics) and by that speaker.
    batch = tmp_path / "batch.csv"
    batch.write_text("wav,transcript,speaker\n" + "".join(
        f"{wavs[u]},{'some words here' if n < 2 else ''},\n" for n, u in enumerate(utt_ids))
        + f"{wavs[utt_ids[0]]},hello,\n{wavs[utt_ids[0]]},hello,{speaker}\n")
    result = emoalign("predict", "--model", "models:/emoalign/1", "--batch", batch,
                      "--out", tmp_path / "out.csv", env=env)
    assert result.returncode == 0 and "emoalign version 1" in result.stdout, result.stderr
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines[0].startswith("wav,label,p_neutral,p_happy,p_angry,p_sad")
    out = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    probs = out[[f"p_{c}" for c in ("neutral", "happy", "angry", "sad")]].to_numpy()
    assert probs.shape == (5, 4) and np.allclose(probs.sum(1), 1, atol=1e-5)
    heard = out.at[2, "transcript"]
    assert out["transcript_source"].tolist() == ["given", "given",
                                                 "recognised" if heard else "none",
                                                 "given", "given"]
    assert out["transcript"].tolist()[:2] == ["some words here"] * 2
    assert ("no words given or recognised" in result.stdout) == (not heard)
    # Compared at full precision: a 3-epoch test model can agree to the printed 3 decimals.
    assert not np.array_equal(probs[3], probs[4])

    # (An unregistered model and a malformed URI: tests/test_bad_inputs.py.)
    assert_one_line_error(emoalign("predict", "--model", "models:/emoalign@staging",
                                   "--wav", wavs[utt_ids[0]], "--text", "x", env=env),
                          "has no alias 'staging'")
    assert_one_line_error(emoalign("predict", "--wav", batch, "--text", "x", env=env),
                          "cannot read")


def test_no_credential_from_the_environment_reaches_the_store_or_the_logs(two_runs):
    """Nor the webhook's token (EMOALIGN_WEBHOOK_URL): it was used for both POSTs, and every
    record says only that the URL came from the environment."""
    secrets = (SENTINEL, WEBHOOK_TOKEN)
    scanned = 0
    for path in two_runs["work"].rglob("*"):
        if path.is_file() and "v2" not in path.parts:  # everything but the corpus copy
            assert not any(s.encode() in path.read_bytes() for s in secrets), path
            scanned += path.name in ("mlflow.db", "pipeline.log", "config.resolved.yaml")
    assert scanned >= 5  # the store and both runs' logs and configs were among them
    for printed in two_runs["stdouts"] + two_runs["stderrs"]:
        assert not any(s in printed for s in secrets)
    posts = two_runs["webhook_posts"]
    assert [path for path, _ in posts] == [f"/hook/{WEBHOOK_TOKEN}"] * 2
    assert [body["pipeline_run"] for _, body in posts] == \
        [s["pipeline_run"] for s in two_runs["summaries"]]
    run_dir = Path(two_runs["summaries"][0]["run_dir"])
    assert "webhook: env:EMOALIGN_WEBHOOK_URL" in (run_dir / "config.resolved.yaml").read_text()
    run = two_runs["client"].get_run(two_runs["summaries"][0]["mlflow_run_id"])
    assert run.data.params["notify.webhook"] == "env:EMOALIGN_WEBHOOK_URL"


def test_scrub_masks_credentials_in_params_and_uris(monkeypatch):
    monkeypatch.setenv("MY_API_TOKEN", SENTINEL)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"https://alice:{SENTINEL}x@mlflow.local:5000")
    assert registry.scrub(f"path/{SENTINEL}/x") == "path/***/x"
    assert SENTINEL not in registry.redact(os.environ["MLFLOW_TRACKING_URI"])
    assert registry.redact(os.environ["MLFLOW_TRACKING_URI"]) == "https://mlflow.local:5000"
    params = registry.flatten({"a": {"b": f"x{SENTINEL}"}, "c": [1, 2]})
    assert params == {"a.b": f"x{SENTINEL}", "c": "1,2"}


def test_audit_rebuilds_the_model_bit_for_bit(two_runs, tmp_path):
    result = _audit(two_runs, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    for check in ("code", "data", "config", "manifest", "environment", "metrics", "weights"):
        assert f"OK        {check}:" in result.stdout
    assert "VERDICT: REPRODUCED: same code" in result.stdout


def _audit(two_runs, tmp_path, *args, env: dict | None = None):
    sha, dirty = lineage.git_sha(Path(__file__).resolve().parents[1])
    if sha is None or dirty or two_runs["summaries"][0]["git_dirty"]:
        pytest.skip("audit reproduces committed code; this checkout has uncommitted changes")
    return emoalign("audit", "models:/emoalign/1", "--corpus", two_runs["corpora"][0],
                    "--workdir", tmp_path, *args, env={**two_runs["env"], **(env or {})})


def test_runs_and_versions_record_their_compute_environment(two_runs):
    import torch

    client = two_runs["client"]
    run_tags = client.get_run(two_runs["summaries"][0]["mlflow_run_id"]).data.tags
    version_tags = client.get_model_version("emoalign", "1").tags
    for tags in (run_tags, version_tags):
        assert tags["env.device"] == "cpu"
        assert tags["env.cpu_capability"] == torch.backends.cpu.get_cpu_capability()
        assert tags["env.torch_version"] == torch.__version__
        assert tags["env.threads"] == "1"  # train.threads=1 in TINY
        assert tags["env.deterministic"] == "false"  # enforced on CUDA only
        assert tags["env.cpu_model"] and "env.cuda_version" in tags
        assert "env.cudnn_version" in tags


def test_audit_on_other_cpu_kernels_reproduces_within_tolerance(two_runs, tmp_path,
                                                                monkeypatch):
    """The same commit, data and config re-run with other CPU kernels: floats differ, so
    the audit names the difference and judges the scores within the recorded tolerance."""
    import torch

    trained_on = torch.backends.cpu.get_cpu_capability()
    other = "avx2" if trained_on == "DEFAULT" else "default"
    result = _audit(two_runs, tmp_path, "--keep", env={"ATEN_CPU_CAPABILITY": other})
    assert result.returncode == 0, result.stdout + result.stderr
    assert (f"NOTE      environment: env.cpu_capability {trained_on!r} when trained, "
            f"{other.upper()!r} in the re-run") in result.stdout
    verdict = result.stdout.strip().splitlines()[-1]
    assert verdict.startswith("VERDICT: REPRODUCED WITHIN TOLERANCE"), result.stdout
    assert "env.cpu_capability" in verdict
    tolerated = next(line for line in result.stdout.splitlines()
                     if line.startswith("TOLERATED metrics:"))
    assert "95% bootstrap interval" in tolerated and "predictions agree on" in tolerated

    # `--strict` judges the same re-run (kept by --keep) demanding bit-identity; judged here
    # in this process, as a second re-run would cost as much as the first.
    from pipelines import audit

    (scratch,) = tmp_path.glob("emoalign-audit-*")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", two_runs["uri"])  # models:/ resolves through it
    client = two_runs["client"]
    version = client.get_model_version("emoalign", "1")
    recorded = audit._download(client, version, client.get_run(version.run_id).data.tags,
                               tmp_path / "recorded-again")
    strict = audit.Audit()
    audit._compare(strict, recorded, StepOutputs.of_steps_dir(scratch / "rerun"), True,
                   environment.MIN_AGREEMENT)
    assert any("--strict asks for bit-identity" in line for line in strict.lines), strict.lines
    assert strict.verdict == "NOT REPRODUCED (metrics)"


def test_audit_says_not_reproduced_when_the_config_differs(two_runs, tmp_path):
    client = two_runs["client"]
    run_id = two_runs["summaries"][0]["mlflow_run_id"]
    recorded = client.get_run(run_id).data.tags["config_sha256"]
    client.set_tag(run_id, "config_sha256", "0" * 64)
    try:
        result = _audit(two_runs, tmp_path)
    finally:
        client.set_tag(run_id, "config_sha256", recorded)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "MISMATCH  config:" in result.stdout and "nothing was re-run" in result.stdout
    assert "VERDICT: NOT REPRODUCED (config)" in result.stdout
    assert "weights" not in result.stdout and not any(tmp_path.iterdir())


def test_audit_says_mismatch_on_other_data(two_runs, tmp_path):
    result = emoalign("audit", "models:/emoalign/1", "--corpus", two_runs["corpora"][1],
                      "--workdir", tmp_path, env=two_runs["env"])
    if "is not in this repository" in result.stdout:
        pytest.skip("the model's commit is not in this checkout")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "MISMATCH  data:" in result.stdout and "VERDICT: NOT REPRODUCED" in result.stdout


def test_environment_differences_name_every_changed_key():
    from components.environment import differences

    recorded = {"env.device": "cpu", "env.cpu_capability": "AVX2", "git_sha": "a"}
    now = {"env.device": "cpu", "env.cpu_capability": "DEFAULT", "env.threads": "2"}
    assert differences(recorded, now) == {"env.cpu_capability": ("AVX2", "DEFAULT"),
                                          "env.threads": ("unrecorded", "2")}
    assert differences(now, now) == {}


# ---- the gate, unit by unit -------------------------------------------------------------

def test_unweighted_accuracy_matches_the_evaluation_metric():
    rng = np.random.default_rng(0)
    labels, predicted = rng.integers(0, 4, 300), rng.integers(0, 4, 300)
    expected = scores(labels, predicted, ["a", "b", "c", "d"])["ua"]
    assert unweighted_accuracy(labels, predicted, 4)[0] == pytest.approx(expected)


def test_paired_bootstrap_interval():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 400)
    same = registry.paired_bootstrap(labels, labels, labels, 4, 200, seed=0)
    assert same == (0.0, 0.0)
    noisy = np.where(rng.random(400) < 0.5, labels, (labels + 1) % 4)
    low, high = registry.paired_bootstrap(labels, labels, noisy, 4, 500, seed=0)
    assert 0.4 < low < high < 0.6  # perfect vs about half right
    low, high = registry.paired_bootstrap(labels, noisy, labels, 4, 500, seed=0)
    assert -0.6 < low < high < -0.4


def test_decide_applies_floor_infra_and_tolerance():
    config = Config()
    ok = {"ok": True}
    champion = {"version": "3", "ua": 0.70, "n": 100, "ci_low": -0.05, "ci_high": 0.03}
    assert not registry.decide(config, 0.39, ok, None)[0]
    assert "below the floor" in registry.decide(config, 0.39, ok, None)[1]
    assert not registry.decide(config, 0.8, {"ok": False, "error": "boom"}, None)[0]
    assert registry.decide(config, 0.8, ok, None)[0]
    assert registry.decide(config, 0.695, ok, champion)[0]  # within tolerance 0.01
    promoted, reason = registry.decide(config, 0.68, ok, champion)
    assert not promoted and "worse than the champion" in reason and "v3" in reason


# ---- backends and faults ----------------------------------------------------------------

def _wait_until_up(url: str, proc: subprocess.Popen, seconds: float) -> bool:
    """Poll `url` until it answers OK; False if the process exits or time runs out."""
    import requests

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if requests.get(url, timeout=1).ok:
                return True
        except requests.RequestException:
            time.sleep(0.5)
    return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_tracking_server_stops_the_run_before_any_work(prepared, tmp_path):
    dead = f"http://127.0.0.1:{_free_port()}"
    result = emoalign("run", "--corpus", prepared["corpus"], "--workdir", tmp_path,
                      env={"MLFLOW_TRACKING_URI": dead})
    assert_one_line_error(result, f"MLflow tracking server {dead} is unreachable",
                          "nothing was trained")
    assert "Executing task" not in result.stdout
    assert not (tmp_path / "pipeline_root").exists()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 with a SQLite backend."""
    work = tmp_path_factory.mktemp("server")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{work / 'server.db'}",
         "--artifacts-destination", str(work / "artifacts"), "--workers", "1"],
        stdout=open(work / "server.log", "w"), stderr=subprocess.STDOUT,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    uri = f"http://127.0.0.1:{port}"
    if not _wait_until_up(uri + "/health", proc, 90):
        proc.kill()
        pytest.fail("mlflow server did not start: " + (work / "server.log").read_text()[-2000:])
    yield uri
    proc.terminate()
    proc.wait(timeout=30)


def test_log_register_gate_and_promote_through_a_real_server(two_runs, mlflow_server,
                                                             monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    run_dir = Path(two_runs["summaries"][0]["run_dir"])
    config = load_config(None, GATE)
    outputs = StepOutputs(run_dir / "ingest" / "manifest",
                                   run_dir / "validate" / "validated",
                                   run_dir / "summarize" / "model",
                                   run_dir / "summarize" / "evaluation")
    tracked = registry.track(outputs, config, Lineage(
        str(two_runs["corpora"][0]), "abc.dir", "deadbeef", False, "server-test"),
        tmp_path / "track")
    first = registry.register(outputs, config, tracked["run_id"], tmp_path / "reg1")
    second = registry.register(outputs, config, tracked["run_id"], tmp_path / "reg2")
    assert first["promoted"] and first["model_version"] == "1"
    # The same model re-scored against itself: delta 0, promoted within tolerance.
    assert second["promoted"] and second["numbers"]["delta_ua"] == 0
    assert second["numbers"]["delta_ua_ci95"] == [0, 0]
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    aliases = client.get_registered_model("emoalign").aliases
    assert {k: str(v) for k, v in aliases.items()} == {"champion": "2", "challenger": "2"}
    entry = registry.promote("emoalign", "1", "server test")
    assert (entry["from"], entry["to"]) == ("2", "1")
    assert client.get_model_version("emoalign", "1").tags["pipeline_run"] == "server-test"


def test_two_registrations_at_once_get_distinct_versions_and_one_champion(two_runs, tmp_path):
    env = two_runs["env"]
    source = Path(two_runs["summaries"][1]["run_dir"])
    copies = []
    for n in range(2):
        copy = tmp_path / f"run{n}"
        shutil.copytree(source, copy, symlinks=True)
        copies.append(copy)
    before = {v.version for v in two_runs["client"].search_model_versions("name='emoalign'")}
    with ThreadPoolExecutor(2) as both:  # two processes, started together
        done = list(both.map(lambda c: emoalign("register", "--pipeline-run", c, env=env),
                             copies))
    assert all(d.returncode == 0 for d in done), [(d.stdout, d.stderr) for d in done]
    after = {v.version for v in two_runs["client"].search_model_versions("name='emoalign'")}
    new = after - before
    assert len(new) == 2
    model = two_runs["client"].get_registered_model("emoalign")
    assert registry.LOCK_TAG not in model.tags
    champion_moves = [e for e in registry.read_history(two_runs["client"], "emoalign")
                      if e["alias"] == "champion"]
    for before_move, after_move in zip(champion_moves, champion_moves[1:]):
        assert after_move["from"] == before_move["to"]
    assert champion_moves[-1]["to"] == str(model.aliases["champion"])


def test_mlflow_models_serve_answers_scoring_requests(two_runs, tmp_path):
    """`mlflow models serve -m models:/emoalign@champion`, scored over HTTP with a base64
    WAV and with a path; a bad request gets a 400 with the reason."""
    import base64

    import requests

    run_dir = Path(two_runs["summaries"][0]["run_dir"])
    wav = next(two_runs["corpora"][0].glob("Session5/sentences/wav/*/*.wav"))
    port = _free_port()
    env = {**os.environ, **two_runs["env"],
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m",
                             "models:/emoalign@champion", "--env-manager", "local",
                             "-h", "127.0.0.1", "-p", str(port)],
                            stdout=open(tmp_path / "serve.log", "w"), stderr=subprocess.STDOUT,
                            env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        if not _wait_until_up(url + "/ping", proc, 120):
            pytest.fail("server did not start: " + (tmp_path / "serve.log").read_text()[-2000:])
        encoded = base64.b64encode(wav.read_bytes()).decode()
        by_bytes = requests.post(url + "/invocations", json={"dataframe_records": [
            {"wav": encoded, "transcript": "oh no"}]}, timeout=60)
        by_path = requests.post(url + "/invocations", json={"dataframe_split": {
            "columns": ["wav", "transcript"], "data": [[str(wav), "oh no"]]}}, timeout=60)
        assert by_bytes.status_code == by_path.status_code == 200, by_bytes.text
        (answer,) = by_bytes.json()["predictions"]
        assert answer == by_path.json()["predictions"][0]
        assert answer["label"] in ("neutral", "happy", "angry", "sad")
        assert sum(answer[f"p_{c}"] for c in ("neutral", "happy", "angry", "sad")) == \
            pytest.approx(1, abs=1e-5)
        bad = requests.post(url + "/invocations", json={"dataframe_records": [
            {"wav": str(run_dir / "nope.wav"), "transcript": "x"}]}, timeout=60)
        assert bad.status_code == 400 and "cannot read" in bad.json()["message"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_processes_opening_a_new_store_at_once_take_turns(tmp_path):
    """Two runs started together on a fresh SQLite store must not both create its tables."""
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    code = "from components import registry; registry.connect(); print('ok')"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "MLFLOW_TRACKING_URI": uri})
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all(out.strip() == "ok" for out, _ in outs)


def test_a_store_outage_is_named_and_anything_else_is_raised_as_it_is(tmp_path):
    """artifact_access: a tracking server that does not answer is an outage, reported in one
    line with what could not be done; a failure beside a healthy (SQLite) store is not, and
    keeps its own exception."""
    from components.registry.store import artifact_access, store_outage

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # closed again: nothing listens
    client = MlflowClient(tracking_uri=dead)
    assert store_outage(dead).startswith(f"MLflow tracking server {dead} does not answer")
    with pytest.raises(registry.RegistryError) as failed:
        with artifact_access(client, "store the model's files", "nothing was registered"):
            raise OSError("upload failed\nwith a long retry report")
    message = str(failed.value)
    assert message.startswith(f"could not store the model's files: MLflow tracking server "
                              f"{dead} does not answer (")
    assert message.endswith("; nothing was registered") and "\n" not in message

    local = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert store_outage(local.tracking_uri) is None
    with pytest.raises(OSError, match="upload failed"):
        with artifact_access(local, "store the model's files", "nothing was registered"):
            raise OSError("upload failed")


def test_a_server_too_slow_on_its_artifact_store_is_named_as_answering():
    """A tracking server whose /health answers but whose artifact listing outlasts the probe
    (it is retrying a dead S3 endpoint) is named as answering, with its artifact store at
    fault; one that answers nothing at all does not answer."""
    import http.server
    import threading
    import time

    from components.registry.store import _artifact_store_problem

    class SlowOnArtifacts(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.startswith("/api/2.0/mlflow-artifacts/"):
                time.sleep(3)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowOnArtifacts)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        problem = _artifact_store_problem(uri, timeout_s=1)
    finally:
        server.shutdown()
        server.server_close()
    assert problem == ("answers, but its artifact store fails (no answer in 1 s listing it; "
                       "is its S3 endpoint up?)")
    assert _artifact_store_problem(uri, timeout_s=1).startswith("does not answer (")
