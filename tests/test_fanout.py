"""Folds × seeds: each (fold, seed) trains and evaluates as its own kfp.local task through
dsl.ParallelFor, and `summarize` collects them (dsl.Collected) into one summary, one
model version and one MLflow run with a nested run per task."""

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from components import evaluate, member, outputs, train
from components.config import load_config
from conftest import TINY, assert_one_line_error, emoalign
from model.metrics import unweighted_accuracy
from pipelines.inprocess import run_steps

# A floor no such model reaches: the register task is skipped under its dsl.If, and
# `emoalign register` registers the finished run afterwards.
FOLDS_X_SEEDS = [*TINY, "train.epochs=2", "model.kind=text", "protocol=loso",
                 "train.seeds=0,1", "train.parallelism=2", "registry.ua_floor=0.99"]
# Two sessions of the prepared corpus: leave-one-session-out gives two folds, so two folds
# times two seeds are four tasks (five sessions would be ten tasks checking nothing more).
SESSIONS = (4, 5)
EXPECTED = {(f"session{s}", seed) for s in SESSIONS for seed in (0, 1)}


def sets(overrides):
    return sum((["--set", o] for o in overrides), [])


@pytest.fixture(scope="session")  # kept while other modules' tests run on this worker
def fanned_out(prepared, tmp_path_factory):
    work = tmp_path_factory.mktemp("fanout")
    corpus = work / "corpus" / "IEMOCAP_full_release"
    shutil.copytree(prepared["corpus"], corpus, ignore=lambda folder, names: [
        n for n in names if n.startswith("Session") and int(n[-1]) not in SESSIONS])
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    result = emoalign("run", "--corpus", corpus.parent, "--workdir", work / "runs",
                      "--summary-json", work / "summary.json", *sets(FOLDS_X_SEEDS), env=env)
    assert result.returncode == 0, result.stderr + result.stdout[-3000:]
    summary = json.loads((work / "summary.json").read_text())
    registered = emoalign("register", "--pipeline-run", summary["run_dir"], env=env)
    assert registered.returncode == 0, registered.stderr
    return {"summary": summary, "stdout": result.stdout, "env": env, "work": work,
            "corpus": corpus,
            "run_dir": Path(summary["run_dir"]), "registered": registered.stdout}


def test_below_the_floor_the_register_task_is_skipped_and_said_so(fanned_out):
    stdout, summary = fanned_out["stdout"], fanned_out["summary"]
    assert "Task 'track' finished with status SUCCESS" in stdout
    assert "Executing task 'register'" not in stdout
    assert "not registered: UA" in stdout and "below registry.ua_floor 0.99" in stdout
    assert summary["model_version"] is None and summary["promoted"] is False
    assert summary["retrained"] is True and summary["mlflow_run_id"]
    # The gate's typed output: the condition compared the bool, the line shows the reason.
    declared = json.loads((fanned_out["run_dir"] / "summarize" / "executor_output.json")
                          .read_text())
    assert declared["parameterValues"] == {"Output": False}
    reason = declared["artifacts"]["model"]["artifacts"][0]["metadata"]["ua_floor_check"]
    assert reason == f"UA {summary['ua']:.4f} is below registry.ua_floor 0.99"
    assert f"not registered: {reason}" in stdout


def test_each_fold_and_seed_is_its_own_task_run_two_at_a_time(fanned_out):
    run_dir = fanned_out["run_dir"]
    iterations = sorted(run_dir.glob("*-iteration-*"))
    assert len(iterations) == len(EXPECTED)
    trained = {(m["fold"], m["seed"]) for m in (
        json.loads((d / "train" / "executor_output.json").read_text())
        ["artifacts"]["model"]["artifacts"][0]["metadata"] for d in iterations)}
    assert trained == EXPECTED
    # Two train tasks start before the first one finishes: they ran side by side.
    log = (run_dir / "pipeline.log").read_text()
    events = re.findall(r"(Executing task|Task) '(train)'", log)
    first_done = [e[0] for e in events].index("Task")
    assert first_done >= 2, events[:4]


def test_the_summary_is_the_mean_and_spread_of_the_tasks_own_scores(fanned_out):
    summary, run_dir = fanned_out["summary"], fanned_out["run_dir"]
    results = summary["results"]
    assert {(r["fold"], r["seed"]) for r in results} == EXPECTED
    classes = ["neutral", "happy", "angry", "sad"]
    for task in run_dir.glob("*-iteration-*/evaluate/evaluation"):
        # Each task's UA, by hand from its own predictions.
        table = pd.read_csv(task / "predictions.csv")
        (fold,), (seed,) = table["fold"].unique(), table["seed"].unique()
        by_hand = unweighted_accuracy(table["label"].map(classes.index).to_numpy(),
                                      table["predicted"].map(classes.index).to_numpy(), 4)[0]
        (reported,) = [r for r in results if (r["fold"], r["seed"]) == (fold, seed)]
        assert reported["ua"] == pytest.approx(by_hand, abs=1e-12)
        assert reported["wa"] == pytest.approx((table["label"] == table["predicted"]).mean())
        assert reported["n_test"] == len(table)
        # The task's own confusion matrix, as the KFP UI draws it.
        matrix = json.loads((task.parent / "executor_output.json").read_text())[
            "artifacts"]["confusion"]["artifacts"][0]["metadata"]["confusionMatrix"]
        assert [a["displayName"] for a in matrix["annotationSpecs"]] == classes
        assert [r["row"] for r in matrix["rows"]] == pd.crosstab(
            pd.Categorical(table["label"], classes), pd.Categorical(table["predicted"], classes),
            dropna=False).to_numpy().tolist()
    uas, was = [r["ua"] for r in results], [r["wa"] for r in results]
    assert summary["ua_mean"] == pytest.approx(np.mean(uas), abs=1e-12)
    assert summary["ua_std"] == pytest.approx(np.std(uas), abs=1e-12)
    assert summary["wa_mean"] == pytest.approx(np.mean(was), abs=1e-12)
    assert summary["wa_std"] == pytest.approx(np.std(was), abs=1e-12)
    assert (summary["ua"], summary["wa"]) == (summary["ua_mean"], summary["wa_mean"])
    metrics = json.loads((run_dir / "summarize" / "evaluation" / "metrics.json").read_text())
    assert set(metrics["per_fold"]) == {f"session{s}" for s in SESSIONS}
    assert metrics["per_seed"]["1"]["ua_mean"] == pytest.approx(
        np.mean([r["ua"] for r in results if r["seed"] == 1]))
    # The confusion matrix pools every task's predictions.
    assert np.sum(metrics["confusion"]) == sum(r["n_test"] for r in results) == \
        summary["n_test"]
    assert f"over {len(EXPECTED)} (fold, seed) models" in fanned_out["stdout"]


def test_one_version_serves_every_model_and_each_task_is_a_nested_run(fanned_out, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    summary = fanned_out["summary"]
    client = MlflowClient(fanned_out["env"]["MLFLOW_TRACKING_URI"])
    versions = client.search_model_versions("name='emoalign'")
    assert [str(v.version) for v in versions] == ["1"]
    # Registered by hand after the run; the gate still applies the run's floor.
    assert fanned_out["registered"].startswith("emoalign version 1: not promoted (UA ")
    assert "below the floor 0.99" in fanned_out["registered"]
    served = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=client.get_model_version_download_uri("emoalign", "1"),
        dst_path=str(tmp_path)))
    assert {p.stem for p in served.glob("artifacts/*.pt")} == \
        {f"{f}-seed{s}" for f, s in EXPECTED}
    parent = client.get_run(summary["mlflow_run_id"])
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert {(c.data.tags["fold"], int(c.data.tags["seed"])) for c in children} == EXPECTED
    for child in children:
        (result,) = [r for r in summary["results"] if r["fold"] == child.data.tags["fold"]
                     and r["seed"] == int(child.data.tags["seed"])]
        assert child.data.metrics["evaluate/ua"] == pytest.approx(result["ua"])
        curve = client.get_metric_history(child.info.run_id, "train/loss")
        assert [m.step for m in curve] == [1, 2]
    assert parent.data.metrics["evaluate/models"] == len(EXPECTED)
    assert parent.data.metrics["evaluate/ua"] == pytest.approx(summary["ua_mean"])


def test_fanned_out_equals_one_after_the_other(fanned_out, tmp_path):
    """The same tasks run sequentially in one process (one thread each, as TINY sets):
    the same weights, bit for bit, and the same summary."""
    config = load_config(None, FOLDS_X_SEEDS)
    sequential = run_steps(fanned_out["corpus"], config, tmp_path / "seq")["metrics"]
    summary = fanned_out["summary"]
    assert sequential["results"] == summary["results"]
    assert (sequential["ua"], sequential["wa"]) == (summary["ua"], summary["wa"])
    collected = fanned_out["run_dir"] / "summarize" / "model"
    for member_dir in outputs.TrainedModel(tmp_path / "seq" / "train").member_dirs():
        mine = torch.load(member_dir / "model.pt", weights_only=True)["state_dict"]
        theirs = torch.load(collected / member_dir.name / "model.pt",
                            weights_only=True)["state_dict"]
        assert all(torch.equal(mine[k], theirs[k]) for k in mine), member_dir.name


# Loaded by every Python process of the run (PYTHONPATH); in the train tasks alone (the
# others need not import torch for it) it makes the seed-1 task fail.
FAULT = """
import sys

if sys.argv[sys.argv.index("--function_to_execute") + 1:][:1] == ["train"]:
    from components import train

    real_train_member = train.train_member

    def train_member(task, *args, **kwargs):
        if task.seed == 1:
            raise train.TrainError("injected fault in this task alone")
        return real_train_member(task, *args, **kwargs)

    train.train_member = train_member
"""
# kfp.local runs every iteration of a ParallelFor whatever fails: two tasks show the same.
FAILING = [*TINY, "train.epochs=1", "model.kind=text", "train.seeds=0,1",
           "train.parallelism=2", "registry.ua_floor=0.0"]


@pytest.mark.slow
def test_one_failing_task_fails_the_run_naming_its_fold_and_seed(prepared, tmp_path):
    (tmp_path / "fault").mkdir()
    (tmp_path / "fault" / "sitecustomize.py").write_text(FAULT)
    # Before the caller's PYTHONPATH, not instead of it: the code under test may be there.
    # sitecustomize runs as each task starts, forked or not (pipelines/warm_server.py).
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path / "fault"),
                                                       os.environ.get("PYTHONPATH")]))}
    result = emoalign("run", "--corpus", prepared["corpus"].parent, "--workdir",
                      tmp_path / "runs", *sets(FAILING), env=env)
    assert result.returncode == 2, result.stdout[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("emoalign: error: task 'train' of fold session5 seed 1 failed: "
                           "TrainError: injected fault in this task alone"), line
    # The other task ran; nothing was collected, tracked or registered from the partial set.
    assert result.stdout.count("Task 'train' finished with status SUCCESS") == 1
    for task in ("summarize", "track", "register"):
        assert f"Executing task '{task}'" not in result.stdout
    from mlflow import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    assert client.search_registered_models() == []
    assert all(not client.search_runs([e.experiment_id]) for e in client.search_experiments())


@pytest.mark.parametrize("override, fragment", [
    ("train.seeds=", "config key 'train.seeds' must list at least 1 value, got []"),
    ("train.seeds=0,one", "'train.seeds' expects an integer, got 'one'"),
    ("train.seeds=1,1", "config key 'train.seeds' must not list a value twice, got [1, 1]"),
    ("train.parallelism=0", "config key 'train.parallelism' must be at least 1, got 0"),
])
def test_bad_fan_out_settings_are_one_line_errors(override, fragment, tmp_path):
    assert_one_line_error(emoalign("run", "--workdir", tmp_path, "--set", override), fragment)


def test_a_test_session_without_a_class_is_named_not_a_nan(prepared, tmp_path):
    rows = outputs.read_manifest(prepared["validated"] / "manifest.parquet")
    rows = rows[~((rows["session"] == 3) & (rows["label"] == "sad"))]
    rows.to_parquet(tmp_path / "manifest.parquet")
    config = load_config(None, [*TINY, "train.epochs=1", "model.kind=text", "protocol=loso"])
    member.train_all(prepared["store"], tmp_path / "manifest.parquet", tmp_path / "m", config)
    metrics = evaluate.run(tmp_path / "m", prepared["store"], tmp_path / "manifest.parquet",
                           tmp_path / "e", config)
    assert metrics["missing_classes"] == {"session3-seed0": ["sad"]}
    assert all(np.isfinite(r["ua"]) for r in metrics["results"]) and np.isfinite(metrics["ua"])
    assert "note: session3-seed0's test session has no sad utterances" in \
        (tmp_path / "e" / "report.md").read_text()


def test_the_compiled_fan_out_limits_parallelism_and_gives_each_task_a_gpu(tmp_path):
    out = tmp_path / "p.yaml"
    result = emoalign("compile", "--out", out, "--set", "train.parallelism=3")
    assert result.returncode == 0, result.stderr
    ir, platform = yaml.safe_load_all(out.read_text())
    loops = {name: c for name, c in ir["components"].items()
             if any("parameterIterator" in t for t in c.get("dag", {}).get("tasks", {}).values())}
    (loop_task,) = [t for c in loops.values() for t in c["dag"]["tasks"].values()
                    if "parameterIterator" in t]
    assert loop_task["iteratorPolicy"]["parallelismLimit"] == 3
    inner = ir["components"][loop_task["componentRef"]["name"]]["dag"]["tasks"]
    assert set(inner) == {"train", "evaluate"}
    train_exec = ir["deploymentSpec"]["executors"]["exec-train"]["container"]
    assert int(train_exec["resources"]["accelerator"]["resourceCount"]) == 1
    train_platform = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][
        "exec-train"]
    assert train_platform["tolerations"] and train_platform["nodeSelector"]["labels"]
    collected = ir["components"]["comp-summarize"]["inputDefinitions"]["artifacts"]
    assert collected["models"]["isArtifactList"] and collected["evaluations"]["isArtifactList"]


def test_cache_keys_of_trained_tasks_survive_a_new_seed(tmp_path):
    """On a cluster a task's parameters (and its input artifacts, which come from cached
    upstream tasks when theirs did not change) are its cache key: adding a seed or changing
    the learning rate must leave the data steps' and the existing (fold, seed) tasks' alone."""
    base = load_config(None, ["protocol=loso", "train.seeds=0,1"])
    more = load_config(None, ["protocol=loso", "train.seeds=0,1,2", "train.lr=0.001",
                              "train.parallelism=3"])
    assert base.for_data_steps().to_yaml() == more.for_data_steps().to_yaml()
    assert base.for_data_steps().to_yaml() != load_config(
        None, ["features.n_mfcc=20"]).for_data_steps().to_yaml()
    assert base.for_task(1).to_yaml() == load_config(
        None, ["protocol=loso", "train.seeds=1,0,5", "train.parallelism=4"]).for_task(1).to_yaml()
    assert base.for_task(0).to_yaml() != base.for_task(1).to_yaml()
    # The compiled DAG hands the data steps fetch's data_config_yaml, not the whole config.
    out = tmp_path / "p.yaml"
    assert emoalign("compile", "--out", out).returncode == 0
    ir, _ = yaml.safe_load_all(out.read_text())
    dags = [c["dag"]["tasks"] for c in ir["components"].values() if "dag" in c]
    for step in ("ingest", "validate", "features"):
        (task,) = [tasks[step] for tasks in dags if step in tasks]
        # Inside the dsl.If the fetch output arrives as a channel of the condition.
        source = task["inputs"]["parameters"]["config_yaml"]["componentInputParameter"]
        assert source == "pipelinechannel--fetch-data_config_yaml", (step, source)
