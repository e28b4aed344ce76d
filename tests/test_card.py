"""The model card of a registered version: its numbers against metrics.json, the same card as
the version's description, its run's artifact and the register task's Markdown output, and
`emoalign card`. The whole-run tests read the shared `two_runs` (registered by the code under
test); the rest are units."""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from components.config import load_config
from components.outputs import StepOutputs, read_manifest
from components.registry import card
from conftest import assert_one_line_error, emoalign
from model.metrics import scores


def _run(two_runs, n: int) -> dict:
    """Version n+1's card and what it was made from."""
    summary = two_runs["summaries"][n]
    run_dir = Path(summary["run_dir"])
    outputs = StepOutputs.of_pipeline_run(run_dir)
    return {"summary": summary, "run_dir": run_dir, "outputs": outputs,
            "metrics": outputs.evaluation.metrics(),
            "card": (outputs.registration_dir / card.CARD_FILE).read_text()}


def _section(text: str, heading: str) -> str:
    (section,) = [part for part in text.split("\n## ") if part.startswith(heading + "\n")]
    return section


def _row(text: str, first: str) -> list[str]:
    """The cells of the Markdown table row whose first cell is `first`."""
    (line,) = [line for line in text.splitlines() if line.startswith(f"| {first} |")]
    return [cell.strip() for cell in line.strip("|").split("|")][1:]


@pytest.mark.parametrize("n", [0, 1])
def test_the_cards_numbers_are_the_runs(two_runs, n):
    run = _run(two_runs, n)
    text, metrics, summary = run["card"], run["metrics"], run["summary"]
    evaluation, data = _section(text, "Evaluation"), _section(text, "Training data")
    front = card.parse_front_matter(text)
    assert yaml.safe_load(text.split("---\n")[1]) == front
    (entry,) = front["model-index"]
    assert entry["name"] == f"emoalign-v{summary['model_version']}"
    (result,) = entry["results"]
    assert result["dataset"]["revision"] == summary["data_hash"]
    assert result["dataset"]["split"] == "session 5 held out"
    ua, wa = result["metrics"]
    assert (ua["type"], ua["value"]) == ("unweighted_accuracy", metrics["ua"])
    assert (wa["type"], wa["value"]) == ("accuracy", metrics["wa"])
    assert ua["args"]["protocol"] == wa["args"]["protocol"] == metrics["protocol"]
    assert {"generated-sample-corpus", "not-for-real-speech"} <= set(front["tags"])

    # UA and WA with their intervals, which hold them.
    for name, meta in (("UA", ua), ("WA", wa)):
        value, interval = _row(evaluation, name)
        low, high = map(float, interval.split(" – "))
        assert float(value) == round(metrics[name.lower()], 4)
        assert low <= float(value) <= high
        assert meta["args"]["ci95"][0] <= meta["value"] <= meta["args"]["ci95"][1]
        assert [round(v, 4) for v in meta["args"]["ci95"]] == [low, high]
    for c, v in metrics["per_class"].items():
        assert _row(evaluation, c) == [f"{v['recall']:.4f}", f"{v['precision']:.4f}",
                                 f"{v['f1']:.4f}", str(v["support"])]
    for session, v in metrics["per_session"].items():
        assert _row(evaluation, f"session {session}") == [f"{v['ua']:.4f}", f"{v['wa']:.4f}",
                                                          str(v["n"])]
    # Per speaker gender, from the predictions and the manifest's gender column.
    predictions = run["outputs"].evaluation.predictions().merge(
        read_manifest(run["outputs"].validated.manifest_path)[["utt_id", "gender"]],
        on="utt_id")
    for gender, name in (("F", "female"), ("M", "male")):
        part = predictions[predictions["gender"] == gender]
        s = scores(part["label"].map(metrics["classes"].index),
                   part["predicted"].map(metrics["classes"].index), metrics["classes"])
        assert _row(evaluation, name) == [f"{s['ua']:.4f}", f"{s['wa']:.4f}",
                                          str(len(part))]
    a = metrics["ablation"]
    assert (f"UA {a['ua_without_speech']:.4f} without speech, {a['ua_without_text']:.4f} "
            "without the words") in text
    alignment = metrics["attention_alignment"]
    assert (f"Attention lift {alignment['lift']:.2f} (1 = none; the diagonal prior alone "
            f"{alignment['prior_lift']:.2f}, so {alignment['lift_over_prior']:.2f} x the "
            "prior)") in text

    # The training data: ingest's counts per class and session, validation's outcome.
    ingest, classes = run["outputs"].ingested.report(), metrics["classes"]
    for session, counts in ingest["counts"]["label_by_session"].items():
        cells = [counts.get(c, 0) for c in classes]
        assert _row(data, f"session {session}") == [str(v) for v in cells + [sum(cells)]]
    totals = [ingest["counts"]["label"][c] for c in classes]
    assert _row(data, "all") == [str(v) for v in totals + [sum(totals)]]
    assert summary["data_hash"] in data
    assert "Validation passed: " in text
    # The first run had no champion to compare with; the second compared with version 1's
    # data (a fifth of the neutral utterances relabelled angry: class shares moved).
    if n == 0:
        assert "Drift: no drift check: no champion yet." in text
    else:
        assert "Drift against champion version 1 of 'emoalign':" in text
        (report,) = run["run_dir"].glob("validate/**/validation_report.json")
        (share,) = [d for d in json.loads(report.read_text())["drift"]
                    if d["metric"] == "class_share"]
        assert share["value"] > 0.05  # the relabelling shows
        assert _row(text, "class_share") == [str(share[key]) for key in
                                              ("value", "warn", "fail", "status")]
    # The gate, the limitation of the sample corpus, the lineage and how to audit it.
    decision = "Promoted to champion" if summary["promoted"] else "Not promoted"
    assert f"**{decision}** (champion now: version {summary['champion_version']})" in text
    assert card.SAMPLE_LIMITATION in text
    version = summary["model_version"]
    assert f"| code | `{summary['git_sha']}`" in text
    assert (f"emoalign audit models:/emoalign/{version} --corpus "
            f"{two_runs['corpora'][n].resolve()}") in text
    # The registry's description holds it whole, or without its front matter at most.
    described = card.description(text, "elsewhere")
    assert described == text or described.startswith(text.split("\n---\n", 1)[1].strip())


@pytest.mark.parametrize("n", [0, 1])
def test_the_card_is_the_description_the_artifact_and_the_kfp_output(two_runs, n, tmp_path):
    import mlflow

    run = _run(two_runs, n)
    client, version = two_runs["client"], run["summary"]["model_version"]
    registered = client.get_model_version("emoalign", version)
    assert registered.description == card.description(
        run["card"], f"emoalign card models:/emoalign/{version}")
    uri = registered.tags[card.CARD_TAG]
    assert uri == f"runs:/{registered.run_id}/model_card/emoalign/v{version}/model_card.md"
    logged = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path),
                                                 tracking_uri=two_runs["uri"])
    assert Path(logged).read_text() == run["card"]
    assert (run["run_dir"] / "register" / "card").read_text() == run["card"]
    registration = json.loads((run["outputs"].registration_dir / "registration.json")
                              .read_text())
    assert registration["model_card"] == uri

    # Built again from the same run, the card is the same to the byte (fixed bootstrap seed).
    tags = {k: v for k, v in client.get_run(registered.run_id).data.tags.items()
            if not k.startswith("mlflow.")}
    config = load_config(None, two_runs["settings"][n])
    facts = card.decided(card.gather(run["outputs"], config, tags), registration)
    assert card.render(facts) == run["card"]
    # Read from a real IEMOCAP release, the card would not call it sample speech.
    facts["data"]["sample_corpus"] = None
    real = card.render(facts)
    assert card.SAMPLE_LIMITATION not in real and "not-for-real-speech" not in real
    assert "IEMOCAP is ten actors" in real


def test_emoalign_card_prints_it_and_refuses_what_is_not_registered(two_runs):
    env, client = two_runs["env"], two_runs["client"]
    first = emoalign("card", "models:/emoalign/1", env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout == _run(two_runs, 0)["card"]
    champion = client.get_model_version_by_alias("emoalign", "champion")
    shown = emoalign("card", env=env)  # models:/emoalign@champion
    assert shown.returncode == 0, shown.stderr
    # Whole, with its front matter, even where the description is shorter.
    assert shown.stdout == _run(two_runs, int(champion.version) - 1)["card"]
    assert f"# emoalign version {champion.version}\n" in shown.stdout
    assert_one_line_error(emoalign("card", "models:/ghost/1", env=env),
                          "no registered model named 'ghost'")
    assert_one_line_error(emoalign("card", "models:/emoalign/99", env=env),
                          "registered model 'emoalign' has no version 99")


# ---- units ----------------------------------------------------------------------------------

def _predictions(seed: int = 0) -> pd.DataFrame:
    """Two folds, two seeds: every seed predicts every utterance of its fold."""
    rng = np.random.default_rng(seed)
    classes = ["neutral", "happy", "angry", "sad"]
    rows = []
    for fold, n in (("session4", 50), ("session5", 60)):
        labels = rng.integers(0, 4, n)
        for s in (0, 1):
            predicted = np.where(rng.random(n) < 0.7, labels, rng.integers(0, 4, n))
            rows += [{"utt_id": f"{fold}_{i}", "fold": fold, "seed": s,
                      "label": classes[labels[i]], "predicted": classes[predicted[i]]}
                     for i in range(n)]
    return pd.DataFrame(rows)


def test_bootstrap_intervals_hold_the_mean_over_models_and_repeat_exactly():
    classes = ["neutral", "happy", "angry", "sad"]
    table = _predictions()
    members = [scores(m["label"].map(classes.index), m["predicted"].map(classes.index),
                      classes) for _, m in table.groupby(["fold", "seed"])]
    ua, wa = np.mean([m["ua"] for m in members]), np.mean([m["wa"] for m in members])
    (ua_low, ua_high), (wa_low, wa_high) = card.bootstrap_intervals(table, classes)
    assert ua_low < ua < ua_high and wa_low < wa < wa_high
    assert 0.02 < ua_high - ua_low < 0.3
    assert card.bootstrap_intervals(table, classes) == ([ua_low, ua_high], [wa_low, wa_high])
    assert card.bootstrap_intervals(table, classes, seed=1) != ([ua_low, ua_high],
                                                                [wa_low, wa_high])
    # Perfect predictions: nothing to resample away.
    perfect = table.assign(predicted=table["label"])
    assert card.bootstrap_intervals(perfect, classes, samples=50) == ([1.0, 1.0], [1.0, 1.0])


def test_a_card_too_long_for_the_registry_loses_its_front_matter_then_sections():
    body = "# emoalign version 3\n\n" + "".join(f"## Section {i}\n\n{'x' * 900}\n\n"
                                               for i in range(4))
    short = f"---\nlanguage: [en]\n---\n\n{body}"
    assert card.description(short, "emoalign card models:/emoalign/3") == short
    longer = f"---\n{'tags: [a]' * 200}\n---\n\n{body}"
    shortened = card.description(longer, "emoalign card models:/emoalign/3")
    assert len(longer) > card.DESCRIPTION_LIMIT >= len(shortened)
    assert shortened.startswith("# emoalign version 3") and "## Section 3" in shortened
    assert shortened.rstrip().endswith("`emoalign card models:/emoalign/3`.)*")
    longest = body + "".join(f"## More {i}\n\n{'y' * 900}\n\n" for i in range(4))
    cut = card.description(longest, "here")
    assert len(cut) <= card.DESCRIPTION_LIMIT and card.SHORTENED in cut
    assert re.search(r"## More \d\n\n(y+)\n\n\*\(Shortened", cut)  # whole sections only


def test_only_the_generators_truth_file_makes_a_sample_corpus(tmp_path):
    from components.iemocap import GENERATED_MARKER as TRUTH_FILENAME

    release = tmp_path / "IEMOCAP_full_release"
    release.mkdir()
    assert card.sample_corpus_evidence({"generated_sample": False}, str(tmp_path)) is None
    assert card.sample_corpus_evidence({"generated_sample": True}, "") is not None
    (release / TRUTH_FILENAME).write_text("{}")
    assert TRUTH_FILENAME in card.sample_corpus_evidence({}, str(tmp_path))
    assert TRUTH_FILENAME in card.sample_corpus_evidence({}, str(release))
