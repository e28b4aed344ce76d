"""`emoalign run`: the KFP DAG executed by kfp.local, and the same DAG compiled for a cluster."""

import base64
import json
import os
import platform
from pathlib import Path

import pytest
import yaml

from components import environment, feature_store, lineage, outputs
from components.config import Config, config_from_yaml, load_config
from conftest import GATE, assert_one_line_error, emoalign, truth_of
from pipelines import local
from pipelines.local import PipelineFailed, run_pipeline
from pipelines.steps import ORDER

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def test_run_executes_the_pipeline_through_kfp_local(two_runs):
    """The first of the shared runs (`emoalign run`, holdout, align): every task ran in
    kfp.local, and its outputs, summary and resolved config are where they should be. (The
    register task skipped under its dsl.If is the fanned-out run's test.)"""
    corpus, summary, stdout = (two_runs["corpora"][0], two_runs["summaries"][0],
                               two_runs["stdouts"][0])
    for task in ORDER:
        assert f"Executing task '{task}'" in stdout
        assert f"Task '{task}' finished with status SUCCESS" in stdout
    # pipelines/steps.py states the order; kfp.local followed it. `plan` reads only the
    # validated manifest, so it may start before or after `features` (kfp.local orders
    # independent tasks by set iteration, which changes with the hash seed).
    started = {task: stdout.index(f"Executing task '{task}'") for task in ORDER}
    chain = [started[task] for task in ORDER if task != "plan"]
    assert chain == sorted(chain)
    assert started["validate"] < started["plan"] < started["train"]
    assert "validation passed: 200 rows = 200 kept + 0 quarantined" in stdout
    assert "Streamed logs" not in stdout  # the full task logs go to pipeline.log

    run_dir = Path(summary["run_dir"])
    assert run_dir.parent == (two_runs["work"] / "runs" / "pipeline_root").resolve()
    assert summary["data_hash"] == lineage.release_hash(corpus)
    truth = truth_of(corpus)
    assert summary["label_counts"] == truth["counts"]["class4"]
    assert summary["n_label_blocks"] == truth["n_utterances"]

    # The task's artifacts, where kfp.local puts them.
    task = run_dir / "ingest"
    manifest = outputs.read_manifest(task / "manifest" / outputs.MANIFEST)
    assert len(manifest) == truth["n_utterances"]
    metrics = json.loads((task / "executor_output.json").read_text())
    assert "label_blocks" in json.dumps(metrics)
    assert "```" in (task / "summary").read_text()
    assert "Streamed logs" in (run_dir / "pipeline.log").read_text()
    resolved = config_from_yaml((run_dir / "config.resolved.yaml").read_text())
    expected = load_config(None, GATE + ["seed=0"])
    expected.features.cache_dir = str((two_runs["work"] / "runs" / "feature_cache").resolve())
    expected.notify.webhook = "env:EMOALIGN_WEBHOOK_URL"  # the shared runs' webhook URL
    assert resolved == expected and summary["config_sha256"] == expected.sha256()
    store = feature_store.FeatureStore(run_dir / "features" / "store", verify=True)
    assert len(store) == truth["n_utterances"]
    assert "features: built 200 utterances" in stdout
    metrics = json.loads((run_dir / "summarize" / "evaluation" / "metrics.json").read_text())
    assert (summary["wa"], summary["ua"]) == (metrics["wa"], metrics["ua"])
    session5_labelled = sum(1 for u, i in truth["utterances"].items() if u.startswith("Ses05")
                            and i["code"] in ("neu", "hap", "exc", "ang", "sad"))
    assert summary["n_test"] == metrics["n_test"] == session5_labelled
    assert f"align (holdout): WA {metrics['wa']:.3f}" in stdout
    assert (run_dir / "summarize" / "model" / "session5-seed0" / "model.pt").is_file()
    assert (summary["n_kept"], summary["n_quarantined"]) == (truth["n_utterances"], 0)
    validated = run_dir / "validate" / "validated"
    assert outputs.read_manifest(validated / "manifest.parquet").shape[0] == truth["n_utterances"]
    assert "PASSED" in (run_dir / "validate" / "report").read_text()
    assert summary["retrained"] is True and summary["mlflow_run_id"]
    assert summary["model_version"] == "1" and summary["promoted"] is True
    assert "registered emoalign version 1: promoted to champion" in stdout

    # What the KFP UI shows: the gates' typed outputs, each (fold, seed) task's confusion
    # matrix, and the plots on one HTML page; the PNGs stay in the evaluation folder.
    run = local.LocalRun(run_dir, run_dir / "pipeline.log", 0)
    assert run.parameter("check") is True and run.parameter("summarize") is True
    assert summary["retrain_reason"] == run.artifact_metadata("check", "decision")["reason"]
    assert summary["retrain_reason"].startswith("forced")
    assert run.artifact_metadata("summarize", "model")["ua_floor_check"] == \
        f"UA {metrics['ua']:.4f} reaches registry.ua_floor 0.0"
    (evaluate,) = run_dir.glob("*-iteration-0/evaluate/executor_output.json")
    declared = json.loads(evaluate.read_text())["artifacts"]
    matrix = declared["confusion"]["artifacts"][0]["metadata"]["confusionMatrix"]
    assert [a["displayName"] for a in matrix["annotationSpecs"]] == metrics["classes"]
    assert [r["row"] for r in matrix["rows"]] == metrics["confusion"]  # one task: pooled
    evaluation = Path(declared["evaluation"]["artifacts"][0]["uri"])
    assert evaluation == evaluate.parent / "evaluation"
    assert {p.name for p in evaluation.iterdir()} >= {"metrics.json", "confusion.png",
                                                      "learning_curves.png", "report.md"}
    page = run.artifact_uri("summarize", "plots").read_text()
    assert page.startswith("<!DOCTYPE html>") and "src=\"http" not in page
    plots = run_dir / "summarize" / "evaluation"
    assert (plots / "confusion.png").is_file() and (plots / "learning_curves.png").is_file()
    for png in ("confusion.png", "learning_curves.png", "attention.png"):
        if not (plots / png).is_file():
            continue
        encoded = base64.b64encode((plots / png).read_bytes())
        assert f"data:image/png;base64,{encoded.decode()}" in page, png
    assert f"align (holdout): WA {metrics['wa']:.3f}" in page
    assert run.outputs == outputs.StepOutputs.of_pipeline_run(run_dir)  # the URIs declared


def test_submit_and_schedule_fail_clearly_without_a_cluster(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    host = f"http://127.0.0.1:{port}"
    assert_one_line_error(emoalign("submit", "--host", host),
                          f"cannot reach Kubeflow Pipelines at {host}", "nothing was submitted")
    assert_one_line_error(emoalign("schedule", "--host", host, "--cron", "0 3 * * 1"),
                          "six fields, seconds first")
    assert_one_line_error(emoalign("schedule", "--host", host, "--cron", "0 0 3 * * 1"),
                          f"cannot reach Kubeflow Pipelines at {host}")
    assert_one_line_error(emoalign("submit", "--host", host, "--dvc-rev", "v1"),
                          "--dvc-rev needs --dvc-repo")
    assert_one_line_error(emoalign("submit", "--host", host, "--set", "train.nope=1"),
                          "unknown config key 'train.nope'")


@pytest.mark.slow  # takes a pipeline through kfp.local: not in `make test-fast`
def test_a_failing_task_is_named_with_its_reason_and_log(tmp_path, monkeypatch):
    """fetch retries (10, 20, 40 s on a real run), then the run fails naming it. The waits
    are kfp.local's own time.sleep, skipped here: what is checked is that every retry ran
    and the last failure is the one reported."""
    import types

    from kfp.local.orchestrator import task_executor

    waited = []
    monkeypatch.setattr(task_executor, "time", types.SimpleNamespace(sleep=waited.append))
    with pytest.raises(PipelineFailed) as failure:
        run_pipeline({"corpus": str(tmp_path / "gone"), "config_yaml": Config().to_yaml(),
                      "data_hash": "x"}, tmp_path / "root", echo=False)
    assert waited == [10.0, 20.0, 40.0]
    message = str(failure.value)
    assert "task 'fetch' failed" in message
    assert "CorpusError: corpus path does not exist" in message
    log = Path(message.rsplit("log: ", 1)[1].rstrip(")"))
    assert "Traceback" in log.read_text()


@pytest.mark.slow  # takes a pipeline through kfp.local: not in `make test-fast`
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc alone")
def test_kfp_local_tasks_start_with_the_training_allocator(tmp_path, monkeypatch):
    """run_pipeline's tasks are processes kfp.local starts: they start with glibc's malloc
    settings for training (an operator's other tunables kept), which the train task's
    process cannot set for itself; run_pipeline's own environment is as it was after."""
    from kfp import dsl

    from pipelines import PIPELINE_NAME, pipeline
    from pipelines.kfp_components import IMAGE

    @dsl.component(base_image=IMAGE, install_kfp_package=False)
    def started_with() -> str:
        import os

        return os.environ.get("GLIBC_TUNABLES", "<unset>")

    def one_task_pipeline(*args, **kwargs):
        @dsl.pipeline(name=PIPELINE_NAME)
        def allocator():
            started_with()

        return allocator

    for name in [k for k in os.environ if k.startswith("MALLOC_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.cpu.x86_ibt=on")
    monkeypatch.setattr(pipeline, "build_pipeline", one_task_pipeline)
    run = run_pipeline({}, tmp_path / "root", echo=False)
    ours = ":".join(f"{k}={v}" for k, v in environment.TRAINING_TUNABLES.items())
    assert run.parameter("started-with") == f"glibc.cpu.x86_ibt=on:{ours}"
    assert os.environ["GLIBC_TUNABLES"] == "glibc.cpu.x86_ibt=on"


def test_the_failed_task_is_read_from_kfp_locals_exception(tmp_path):
    """kfp.local's RuntimeError names the failed task and the tasks around it; the plan task's
    declared output says which (fold, seed) an iteration is. The exception is made by
    kfp.local's own function, so a change to its wording fails here."""
    from kfp.local import pipeline_orchestrator

    chain = ["train", "for-loop-2-iteration-1", "condition-1"]
    with pytest.raises(RuntimeError) as raised:
        pipeline_orchestrator.log_and_maybe_raise_for_failure("emoalign", True, chain)
    assert local._failed_chain(raised.value) == chain

    run = local.LocalRun(tmp_path, tmp_path / "pipeline.log", 0)
    (tmp_path / "plan").mkdir()
    items = [{"fold": "session5", "seed": seed} for seed in range(3)]
    (tmp_path / "plan" / "executor_output.json").write_text(
        json.dumps({"parameterValues": {"Output": items}}))
    for i, finished in enumerate((True, False, False)):
        task = tmp_path / f"for-loop-2-iteration-{i}" / "train"
        task.mkdir(parents=True)
        if finished:
            (task / "executor_output.json").write_text("{}")
    log = "  File x\n    raise TrainError('no')\ncomponents.train.TrainError: injected\n"
    assert local._failure_reason(raised.value, log, run) == (
        "task 'train' of fold session5 seed 1 (and 1 other (fold, seed) task)",
        "TrainError: injected")
    with pytest.raises(RuntimeError) as raised:
        pipeline_orchestrator.log_and_maybe_raise_for_failure("emoalign", True, ["fetch"])
    assert local._failure_reason(raised.value, "", run) == ("task 'fetch'", "see the log")


@pytest.mark.slow  # takes a pipeline through kfp.local: not in `make test-fast`
def test_an_error_level_corpus_stops_the_run_at_the_gate(corpus_copy, tmp_path):
    for path in corpus_copy.glob("Session*/dialog/EmoEvaluation/*.txt"):
        path.write_text("\n\n".join(b for b in path.read_text().split("\n\n")
                                     if "\tang\t" not in b))
    result = emoalign("run", "--corpus", corpus_copy, "--workdir", tmp_path / "runs")
    assert_one_line_error(result, "task 'validate' failed",
                          "ValidationError: validation failed: class 'angry' is missing",
                          "report.html", "log: ")
    report = Path(result.stderr.split("report: ")[1].split(" ")[0].rstrip(";"))
    assert report.is_file() and "FAILED" in report.read_text()
    assert "Task 'validate' finished with status FAILURE" in result.stdout


def test_run_with_a_missing_corpus_is_a_one_line_error(tmp_path):
    assert_one_line_error(emoalign("run", "--corpus", tmp_path / "nope", "--workdir", tmp_path),
                          "does not exist")


def test_compiled_pipeline_is_in_sync_and_uses_the_project_image(tmp_path):
    out = tmp_path / "p.yaml"
    result = emoalign("compile", "--out", out)
    assert result.returncode == 0, result.stderr
    compiled, platform = yaml.safe_load_all(out.read_text())
    committed = list(yaml.safe_load_all((PROJECT_ROOT / "pipelines" / "emoalign_pipeline.yaml")
                                        .read_text()))
    assert committed == [compiled, platform], \
        "run `make compile` and commit pipelines/emoalign_pipeline.yaml"
    executors = compiled["deploymentSpec"]["executors"]
    assert executors and all(e["container"]["image"] == "emoalign:0.1.0"
                             for e in executors.values())
    assert set(compiled["root"]["inputDefinitions"]["parameters"]) == {
        "corpus", "config_yaml", "data_hash", "git_sha", "git_dirty", "dvc_repo", "dvc_rev",
        "protocol", "seed", "force", "champion_reference"}
    assert_one_line_error(emoalign("compile", "--out", tmp_path / "no" / "dir" / "p.yaml"),
                          "does not exist")


def test_the_compiled_pipeline_gives_the_kfp_ui_its_results():
    """Each (fold, seed) evaluate task has a confusion matrix, summarize an HTML page of the
    plots, and the two gates are bool outputs that the conditions compare with true."""
    ir, _ = yaml.safe_load_all((PROJECT_ROOT / "pipelines" / "emoalign_pipeline.yaml")
                               .read_text())
    components = ir["components"]

    def outputs_of(name):
        spec = components[f"comp-{name}"]["outputDefinitions"]
        return ({k: v["artifactType"]["schemaTitle"] for k, v in spec.get("artifacts", {})
                 .items()}, {k: v["parameterType"] for k, v in spec.get("parameters", {})
                             .items()})

    artifacts, _ = outputs_of("evaluate")
    assert artifacts["confusion"] == "system.ClassificationMetrics"
    assert artifacts["evaluation"] == "system.Dataset"  # the PNGs and metrics.json, as ever
    artifacts, parameters = outputs_of("summarize")
    assert artifacts["plots"] == "system.HTML"
    assert parameters == {"Output": "BOOLEAN"}
    artifacts, parameters = outputs_of("check")
    assert (artifacts, parameters) == ({"decision": "system.Markdown"}, {"Output": "BOOLEAN"})
    conditions = {task["taskInfo"]["name"]: " ".join(task["triggerPolicy"]["condition"].split())
                  for c in [ir["root"], *components.values()] if "dag" in c
                  for task in c["dag"]["tasks"].values()
                  if "condition" in task.get("triggerPolicy", {})}
    assert conditions == {
        "data-code-or-config-changed":
            "inputs.parameter_values['pipelinechannel--check-Output'] == true",
        "ua-at-or-above-floor":
            "inputs.parameter_values['pipelinechannel--summarize-Output'] == true"}


def test_default_corpus_is_regenerated_exactly_as_data_dvc_records(tmp_path, monkeypatch):
    """A fresh clone has no data/: `emoalign run` makes it again, and it matches data.dvc."""
    (tmp_path / "data.dvc").write_text((PROJECT_ROOT / "data.dvc").read_text())
    monkeypatch.setattr(lineage, "DVC_POINTER", tmp_path / "data.dvc")
    monkeypatch.setattr(lineage, "DEFAULT_DATA", tmp_path / "data")
    monkeypatch.setattr(local, "DEFAULT_DATA", tmp_path / "data")
    corpus = local.ensure_default_corpus(Config())
    data_hash, provenance = lineage.data_hash(corpus)
    assert provenance == "data/ matches data.dvc", (
        "the generator no longer makes the corpus data.dvc records: regenerate data/ and "
        "`dvc add data`")
    assert data_hash == lineage.dvc_pointer_hash(PROJECT_ROOT / "data.dvc")

    wav = next(corpus.glob("IEMOCAP_full_release/Session1/sentences/wav/*/*.wav"))
    wav.write_bytes(wav.read_bytes()[:-2])
    changed, provenance = lineage.data_hash(corpus)
    assert changed != data_hash and "differs from data.dvc" in provenance
