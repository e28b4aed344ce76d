"""A new version of the data, end to end: the champion of a registry (the shared `two_runs`),
then a v2 of the corpus tracked by DVC (more utterances, shifted class shares, some
relabelled) that `emoalign retrain` trains on because the data changed, with validation
naming the drift against the champion's data and `emoalign history` showing it beside the
gate's decision; then a v3 whose drift passes a _fail threshold and stops the run before
training, in one line naming the statistic and the champion version."""

import json
import re
import shutil
import subprocess
import sys

import pytest

from components import lineage, sample_corpus
from conftest import GATE, emoalign


def relabel(corpus, old: str, new: str, share: float) -> int:
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


def dvc_add(repo, folder) -> str:
    """`dvc add` the corpus and commit its pointer; the md5 the pointer records."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-C", str(repo)]
    if not (repo / ".dvc").is_dir():
        subprocess.run(["git", "init", "-q", str(repo)], check=True)
        subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "add", "-q", folder.name], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", f"data {folder.name}"], check=True)
    return lineage.dvc_pointer_hash(repo / f"{folder.name}.dvc")


@pytest.fixture
def own_registry(two_runs, tmp_path):
    """A copy of the shared registry (its champion, history, versions), so this test's new
    versions leave the other tests' registry as they read it."""
    store = tmp_path / "mlflow.db"
    shutil.copy(two_runs["work"] / "mlflow.db", store)
    return {**two_runs["env"], "MLFLOW_TRACKING_URI": f"sqlite:///{store}"}


@pytest.mark.slow
def test_a_new_data_version_is_judged_against_the_champions_data(two_runs, own_registry,
                                                                 tmp_path):
    champion = two_runs["client"].get_model_version_by_alias("emoalign", "champion")
    seed = int(champion.tags["seed"])
    settings = sum((["--set", o] for o in GATE + [f"seed={seed}"]), [])

    # v2: more utterances, another draw of the generator, a fifth of neutral relabelled.
    repo = tmp_path / "repo"
    v2 = repo / "IEMOCAP_full_release"
    sample_corpus.generate(v2, 240, seed=7)
    assert relabel(v2, "neu", "ang", 0.2) > 0
    recorded = dvc_add(repo, v2)
    summary_path = tmp_path / "v2.json"
    result = emoalign("retrain", "--corpus", v2, "--workdir", tmp_path / "runs",
                      "--summary-json", summary_path, *settings, env=own_registry)
    assert result.returncode == 0, result.stderr + result.stdout[-3000:]
    summary = json.loads(summary_path.read_text())
    assert summary["retrained"] and summary["retrain_reason"].startswith("data changed")
    assert summary["data_hash"] == recorded  # the version DVC recorded is the one trained

    against = f"champion version {champion.version} of 'emoalign'"
    report = json.loads((next((tmp_path / "runs").rglob("validation_report.json")))
                        .read_text())
    assert report["drift_reference"] == against
    drift = {d["metric"]: d for d in report["drift"]}
    assert drift["class_share"]["value"] > 0.05 and drift["class_share"]["status"] != "fail"
    assert f"drift against {against}: class_share" in result.stdout

    client = two_runs["client"].__class__(tracking_uri=own_registry["MLFLOW_TRACKING_URI"],
                                          registry_uri=own_registry["MLFLOW_TRACKING_URI"])
    version = client.get_model_version("emoalign", summary["model_version"])
    assert version.tags["drift.reference"] == against
    assert version.tags["drift.class_share"].startswith(f"{drift['class_share']['value']:.4f}")
    numbers = json.loads(version.tags["gate.numbers"])
    assert numbers["drift"].startswith(f"data drift against {against}")
    history = emoalign("history", env=own_registry)
    assert f"data drift against {against}" in history.stdout

    # v3: the frustrated and half the neutral utterances relabelled sad: class shares past
    # class_share's _fail threshold, every class still well present.
    now = client.get_model_version_by_alias("emoalign", "champion").version
    v3 = tmp_path / "v3" / "IEMOCAP_full_release"
    shutil.copytree(v2, v3)
    relabel(v3, "fru", "sad", 1.0)
    relabel(v3, "neu", "sad", 0.5)
    result = emoalign("run", "--corpus", v3, "--workdir", tmp_path / "runs3", *settings,
                      env=own_registry)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "task 'validate' failed" in line and "drift in class_share" in line
    assert f"against champion version {now} of 'emoalign'" in line
    assert "Executing task 'train'" not in result.stdout
