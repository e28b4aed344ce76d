"""`emoalign run`: the KFP DAG executed by kfp.local, and the same DAG compiled for a cluster."""

import json
from pathlib import Path

import pytest
import yaml

from components import feature_store, lineage, outputs
from components.config import Config, config_from_yaml, load_config
from conftest import GATE, assert_one_line_error, emoalign, truth_of
from pipelines import local
from pipelines.local import PipelineFailed, run_pipeline

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def test_run_executes_the_pipeline_through_kfp_local(two_runs):
    """The first of the shared runs (`emoalign run`, holdout, align): every task ran in
    kfp.local, and its outputs, summary and resolved config are where they should be. (The
    register task skipped under its dsl.If is the fanned-out run's test.)"""
    corpus, summary, stdout = (two_runs["corpora"][0], two_runs["summaries"][0],
                               two_runs["stdouts"][0])
    for task in ("fetch", "check", "ingest", "validate", "features", "plan", "train",
                 "evaluate", "summarize", "track", "register"):
        assert f"Executing task '{task}'" in stdout
        assert f"Task '{task}' finished with status SUCCESS" in stdout
    assert "validation passed: 200 rows = 200 kept + 0 quarantined" in stdout
    assert "Streamed logs" not in stdout  # the full task logs go to pipeline.log

    run_dir = Path(summary["run_dir"])
    assert run_dir.parent == (two_runs["work"] / "runs" / "pipeline_root").resolve()
    assert summary["data_hash"] == lineage.corpus_hash(corpus)
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


@pytest.mark.slow
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
        "protocol", "seed", "force"}
    assert_one_line_error(emoalign("compile", "--out", tmp_path / "no" / "dir" / "p.yaml"),
                          "does not exist")


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
