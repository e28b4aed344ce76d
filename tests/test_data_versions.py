"""A new version of the data, end to end: the champion of a registry, then a v2 of the corpus
tracked by DVC (more utterances, shifted class shares, some relabelled) that `emoalign
retrain` trains on because the data changed, with validation naming the drift against the
champion's data and `emoalign history` showing it beside the gate's decision (the shared
`two_runs`: its second run is that retrain); then a v3 whose drift passes a _fail threshold
and stops the run before training, in one line naming the statistic and the champion
version."""

import json
import shutil
from pathlib import Path

import pytest

from conftest import GATE, emoalign, relabel


@pytest.fixture
def own_registry(two_runs, tmp_path):
    """A copy of the shared registry (its champion, history, versions), so this test's new
    runs leave the other tests' registry as they read it."""
    store = tmp_path / "mlflow.db"
    shutil.copy(two_runs["work"] / "mlflow.db", store)
    return {**two_runs["env"], "MLFLOW_TRACKING_URI": f"sqlite:///{store}"}


def test_a_new_data_version_is_judged_against_the_champions_data(two_runs, own_registry,
                                                                 tmp_path):
    first, summary = two_runs["summaries"]
    stdout = two_runs["stdouts"][1]
    assert first["promoted"] and first["champion_version"] == "1"
    assert summary["retrained"] and summary["retrain_reason"].startswith("data changed")
    # The version DVC recorded is the one trained.
    assert summary["data_hash"] == two_runs["second_dvc_hash"] != first["data_hash"]

    against = "champion version 1 of 'emoalign'"
    (report_path,) = Path(summary["run_dir"]).glob("validate/**/validation_report.json")
    report = json.loads(report_path.read_text())
    assert report["drift_reference"] == against
    drift = {d["metric"]: d for d in report["drift"]}
    assert drift["class_share"]["value"] > 0.05 and drift["class_share"]["status"] != "fail"
    assert f"drift against {against}: class_share" in stdout

    client = two_runs["client"]
    version = client.get_model_version("emoalign", summary["model_version"])
    assert version.tags["drift.reference"] == against
    assert version.tags["drift.class_share"].startswith(f"{drift['class_share']['value']:.4f}")
    numbers = json.loads(version.tags["gate.numbers"])
    assert numbers["drift"].startswith(f"data drift against {against}")
    history = emoalign("history", env=two_runs["env"])
    assert f"data drift against {against}" in history.stdout

    seed = int(client.get_model_version_by_alias("emoalign", "champion").tags["seed"])
    settings = sum((["--set", o] for o in GATE + [f"seed={seed}"]), [])
    # v3: the frustrated and half the neutral utterances relabelled sad: class shares past
    # class_share's _fail threshold, every class still well present.
    now = client.get_model_version_by_alias("emoalign", "champion").version
    v3 = tmp_path / "v3" / "IEMOCAP_full_release"
    shutil.copytree(two_runs["corpora"][1], v3)
    relabel(v3, "fru", "sad", 1.0)
    relabel(v3, "neu", "sad", 0.5)
    result = emoalign("run", "--corpus", v3, "--workdir", tmp_path / "runs3", *settings,
                      env=own_registry)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "task 'validate' failed" in line and "drift in class_share" in line
    assert f"against champion version {now} of 'emoalign'" in line
    assert "Executing task 'train'" not in result.stdout
