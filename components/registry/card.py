"""The model card of a registered version: `model_card.md` in the Hugging Face layout (YAML
front matter with a `model-index`, then Markdown), built from what the run already holds:
metrics.json, predictions.csv, the ingest and validation reports, the gate's decision and
the run's lineage tags.

Plain steps, so a test can call each: `gather` reads a run's outputs into a dict of facts
(JSON types only), `decided` adds the version and the gate's decision, `render` writes the
card from that dict. Registration logs the card
as an artifact of the version's run, sets it as the version's description (what the MLflow
UI shows) and writes it as the register task's Markdown output; `emoalign card` prints it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from components.config import Config
from components.lineage import DEFAULT_DATA
from components.outputs import StepOutputs, read_manifest
from components.registry.store import RegistryError
from model.metrics import scores, unweighted_accuracy

CARD_FILE = "model_card.md"
CARD_TAG = "model_card"  # on the version: the card's artifact, runs:/<run>/<path>
BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 0  # fixed: the same run always gets the same card
# MLflow keeps a version's description in VARCHAR(5000): PostgreSQL and MySQL refuse more.
DESCRIPTION_LIMIT = 5000
SHORTENED = "*(Shortened to fit the registry's description field; the whole card:"
SAMPLE_LIMITATION = ("**Trained on the generated sample corpus: it is not for real speech.**")
GENDERS = {"F": "female", "M": "male"}
KINDS = {"align": "speech + text, each word attending over the speech (Xu et al. 2019)",
         "late_fusion": "speech + text, probabilities averaged (a baseline)",
         "speech": "speech only (a baseline)", "text": "text only (a baseline)"}


def artifact_dir(name: str, version: str) -> str:
    """Where in its run's artifacts a version's card goes (one run can back several
    versions: `emoalign register` of the same run again)."""
    return f"model_card/{name}/v{version}"


# ---- the facts ----------------------------------------------------------------------------

def gather(outputs: StepOutputs, config: Config, tags: dict) -> dict:
    """What the card says of the run, from its outputs and its MLflow tags (lineage, env.*).
    Registration reads it before it registers anything: a run whose files cannot make a
    card gets no version. `decided` adds the version and the gate's decision."""
    metrics = outputs.evaluation.metrics()
    predictions = outputs.evaluation.predictions()
    classes = metrics["classes"]
    ingest, validation = outputs.ingested.report(), outputs.validated.report()
    kept = read_manifest(outputs.validated.manifest_path)
    ua_ci, wa_ci = bootstrap_intervals(predictions, classes)
    corpus = tags.get("corpus", "")
    return {
        "model": {"kind": metrics["model_kind"], "protocol": metrics["protocol"],
                  "classes": classes, "merge_excited": config.ingest.merge_excited},
        "scores": {"ua": metrics["ua"], "wa": metrics["wa"], "ua_std": metrics["ua_std"],
                   "wa_std": metrics["wa_std"], "ua_ci95": ua_ci, "wa_ci95": wa_ci,
                   "n_test": metrics["n_test"], "models": len(metrics["folds"]),
                   "n_utterances": int(predictions["utt_id"].nunique()),
                   "chance_ua": metrics["chance_ua"],
                   "test_sessions": sorted({str(m["test_session"]) for m in metrics["folds"]}),
                   "bootstrap": {"samples": BOOTSTRAP_SAMPLES, "seed": BOOTSTRAP_SEED}},
        "results": metrics["results"],
        "per_class": metrics["per_class"],
        "per_session": metrics["per_session"],
        "per_gender": per_group(predictions, kept, "gender", classes),
        "per_subset": metrics.get("per_subset") or {},
        "transcripts": {"evaluated_on": metrics.get("transcripts", "gold"),
                        "trained_on": config.train.transcripts,
                        "recognizer": config.serving.recognizer, "asr": metrics.get("asr")},
        "ablation": metrics.get("ablation"),
        "attention": metrics.get("attention_alignment"),
        "missing_classes": metrics.get("missing_classes") or {},
        "data": {"corpus": corpus, "data_hash": tags.get("data_hash", ""),
                 "manifest_sha256": tags.get("manifest_sha256", ""),
                 "sample_corpus": sample_corpus_evidence(ingest, corpus),
                 "label_by_session": {s: {c: counts.get(c, 0) for c in classes}
                                      for s, counts in
                                      ingest["counts"]["label_by_session"].items()},
                 "n_label_blocks": ingest["n_label_blocks"],
                 "n_outside_class_set": ingest["n_outside_class_set"],
                 "audio_hours": round(ingest["total_audio_seconds"] / 3600, 2),
                 "full_release_check": ingest.get("full_release_check", {})},
        "validation": {"passed": validation["passed"], "counts": validation["counts"],
                       "warnings": validation["warnings"],
                       "quarantine_by_check": validation["quarantine_by_check"],
                       "drift": validation.get("drift"),
                       "reference_stats": validation.get("reference_stats"),
                       "drift_reference": validation.get("drift_reference"),
                       "drift_unavailable": validation.get("drift_unavailable")},
        "lineage": {k: tags.get(k, "") for k in (
            "pipeline_run", "git_sha", "git_dirty", "config_sha256", "seed", "validation")},
        "environment": {k: v for k, v in sorted(tags.items()) if k.startswith("env.")},
    }


def decided(facts: dict, registration: dict) -> dict:
    """The facts with the registered version and the gate's decision on it (registration's
    result)."""
    name, version = registration["model_name"], str(registration["model_version"])
    return {**facts,
            "model": {**facts["model"], "name": name, "version": version,
                      "uri": f"models:/{name}/{version}",
                      "run_id": registration["mlflow_run_id"]},
            "gate": {"promoted": registration["promoted"], "reason": registration["reason"],
                     "numbers": registration["numbers"],
                     "infra_check": registration["infra_check"],
                     "champion_version": registration["champion_version"]},
            "audit": audit_command(name, version, facts["data"]["corpus"])}


def bootstrap_intervals(predictions: pd.DataFrame, classes: list[str],
                        samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED
                        ) -> tuple[list[float], list[float]]:
    """95 % intervals of UA and WA as metrics.json reports them (the mean over the (fold,
    seed) models): the test utterances are resampled within each fold, the same draw for
    every seed of that fold, and each model scored on its own predictions of them."""
    ids = {c: i for i, c in enumerate(classes)}
    rng = np.random.default_rng(seed)
    ua, wa, models = np.zeros(samples), np.zeros(samples), 0
    for _, fold in predictions.groupby("fold", sort=True):
        utterances = fold["utt_id"].drop_duplicates().to_numpy()
        idx = rng.integers(0, len(utterances), size=(samples, len(utterances)))
        for _, member in fold.groupby("seed", sort=True):
            member = member.set_index("utt_id").loc[utterances]
            labels = member["label"].map(ids).to_numpy()
            predicted = member["predicted"].map(ids).to_numpy()
            ua += unweighted_accuracy(labels[idx], predicted[idx], len(classes))
            wa += (labels[idx] == predicted[idx]).mean(1)
            models += 1
    return ([float(v) for v in np.percentile(ua / models, [2.5, 97.5])],
            [float(v) for v in np.percentile(wa / models, [2.5, 97.5])])


def per_group(predictions: pd.DataFrame, manifest: pd.DataFrame, column: str,
              classes: list[str]) -> dict:
    """UA, WA and n over every test prediction, by a manifest column joined on utt_id."""
    joined = predictions.merge(manifest[["utt_id", column]], on="utt_id", how="left")
    out = {}
    for value, part in joined.groupby(joined[column].fillna("unknown"), sort=True):
        s = scores(part["label"].map(classes.index), part["predicted"].map(classes.index),
                   classes)
        out[str(value)] = {"ua": s["ua"], "wa": s["wa"], "n": s["n"]}
    return out


def sample_corpus_evidence(ingest_report: dict, corpus: str) -> str | None:
    """Why this run's corpus is the generated sample corpus, or None. Only the generator
    leaves its truth file in a release; data/ alone proves nothing (the real release may
    have replaced it there, with data.dvc rewritten)."""
    from components import iemocap

    if ingest_report.get("generated_sample"):
        return f"its release holds {iemocap.GENERATED_MARKER}"
    if corpus:
        for folder in (Path(corpus), Path(corpus) / iemocap.RELEASE_DIRNAME):
            if (folder / iemocap.GENERATED_MARKER).is_file():
                return f"its folder holds the generator's {iemocap.GENERATED_MARKER}"
    return None


def audit_command(name: str, version: str, corpus: str) -> str:
    command = f"emoalign audit models:/{name}/{version}"
    if corpus and Path(corpus).resolve() != DEFAULT_DATA.resolve():
        command += f" --corpus {corpus}"
    return command


# ---- the card -----------------------------------------------------------------------------

def render(facts: dict) -> str:
    """model_card.md: YAML front matter (model-index, tags), then the sections."""
    sections = [_summary, _intended_use, _training_data, _evaluation, _gate, _limitations,
                _lineage]
    body = "\n\n".join("\n".join(section(facts)) for section in sections)
    header = yaml.dump(front_matter(facts), Dumper=_Dumper, sort_keys=False, width=100)
    return f"---\n{header}---\n\n{body}\n"


class _Dumper(yaml.SafeDumper):
    """Block style, but a list of plain values on one line ([a, b])."""


_Dumper.add_representer(list, lambda dumper, items: dumper.represent_sequence(
    "tag:yaml.org,2002:seq", items,
    flow_style=not any(isinstance(item, (dict, list)) for item in items)))


def front_matter(facts: dict) -> dict:
    model, s, data = facts["model"], facts["scores"], facts["data"]
    protocol, sample = model["protocol"], data["sample_corpus"] is not None
    corpus = "IEMOCAP layout, generated sample corpus" if sample else "IEMOCAP"
    return {
        "language": ["en"],
        "license": "other",
        "library_name": "pytorch",
        "pipeline_tag": "audio-classification",
        "tags": ["emotion-recognition", "multimodal", "iemocap", "emoalign",
                 f"model-{model['kind']}", f"protocol-{protocol}",
                 *(["generated-sample-corpus", "not-for-real-speech"] if sample else [])],
        "datasets": ["iemocap"],
        "model-index": [{
            "name": f"{model['name']}-v{model['version']}",
            "results": [{
                "task": {"type": "audio-classification",
                         "name": "Speech + text emotion recognition "
                                 f"({len(model['classes'])} classes)"},
                "dataset": {"type": "iemocap", "name": corpus,
                            "config": ",".join(model["classes"]),
                            "split": _split(facts), "revision": data["data_hash"]},
                "metrics": [
                    {"type": "unweighted_accuracy", "name": f"UA ({protocol})",
                     "value": s["ua"], "args": {"protocol": protocol, "ci95": s["ua_ci95"]}},
                    {"type": "accuracy", "name": f"WA ({protocol})", "value": s["wa"],
                     "args": {"protocol": protocol, "ci95": s["wa_ci95"]}},
                ]}],
        }],
    }


def parse_front_matter(card: str) -> dict:
    """The YAML between the card's two `---` lines."""
    if not card.startswith("---\n") or "\n---\n" not in card[3:]:
        raise ValueError("no YAML front matter")
    return yaml.safe_load(card[4:card.index("\n---\n", 3)])


def _split(facts: dict) -> str:
    sessions = facts["scores"]["test_sessions"]
    if facts["model"]["protocol"] == "loso":
        return "leave-one-session-out"
    return f"session {', '.join(sessions)} held out"


def _f(value: float) -> str:
    return f"{value:.4f}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(map(str, row)) + " |" for row in rows)]


def _summary(facts: dict) -> list[str]:
    model, s, gate = facts["model"], facts["scores"], facts["gate"]
    verdict = ("promoted to champion" if gate["promoted"] else
               f"not promoted (champion: {_version(gate['champion_version'])})")
    what = KINDS.get(model["kind"], model["kind"])
    return [f"# {model['name']} version {model['version']}",
            "",
            f"Emotion recognition, `{model['kind']}`: {what}. UA {_f(s['ua'])}, WA {_f(s['wa'])} "
            f"({model['protocol']}, {s['n_test']} test predictions, {s['models']} "
            f"(fold, seed) model{'s' if s['models'] > 1 else ''}); {verdict}."]


def _version(version) -> str:
    return f"version {version}" if version else "none"


def _intended_use(facts: dict) -> list[str]:
    classes = ", ".join(facts["model"]["classes"])
    t = facts["transcripts"]
    asr = t["asr"]
    measured = (f"its test scores above: UA {_f(facts['scores']['ua'])} at word error rate "
                f"{_f(asr['wer'])}"
                if asr and asr["wer"] is not None else
                "untested here: `--set evaluate.transcripts=asr` measures it")
    return ["## Intended use",
            "",
            f"- Research and teaching: which of {classes} an English utterance expresses, "
            "from its audio (16 kHz mono WAV) and transcript, as in IEMOCAP's acted dialogs. "
            f"Without a transcript, `{t['recognizer']}` transcribes it ({measured}).",
            "- Out of scope: decisions about people (hiring, health, policing), monitoring, "
            "other languages, other emotions."]


def _training_data(facts: dict) -> list[str]:
    data, v, model = facts["data"], facts["validation"], facts["model"]
    classes = model["classes"]
    source = ("the generated sample corpus (" + data["sample_corpus"] + ")"
              if data["sample_corpus"] else "an IEMOCAP release")
    lines = ["## Training data",
             "",
             f"`{data['corpus']}`: {source}; data hash `{data['data_hash']}`. "
             f"{data['n_label_blocks']} label blocks ({data['audio_hours']} h), "
             f"{data['n_outside_class_set']} outside the class set"
             + ("; excited merged into happy" if model["merge_excited"] else "") + ".",
             ""]
    by_session = data["label_by_session"]
    totals = {c: sum(counts[c] for counts in by_session.values()) for c in classes}
    rows = [[f"session {s}", *(counts[c] for c in classes), sum(counts.values())]
            for s, counts in by_session.items()]
    rows.append(["all", *(totals[c] for c in classes), sum(totals.values())])
    lines += _table(["utterances", *classes, "total"], rows)
    c = v["counts"]
    lines += ["",
              f"Validation {'passed' if v['passed'] else 'FAILED'}: {c['manifest_rows']} rows "
              f"= {c['kept']} kept + {c['quarantined']} quarantined ({c['labelled_quarantined']} "
              f"of {c['labelled']} labelled)"
              + ("".join(f"; {check}: {n}" for check, n in v["quarantine_by_check"].items()))
              + "."]
    against = v.get("drift_reference") or f"`{v['reference_stats']}`"
    if v["drift"]:
        lines += ["", f"Drift against {against}:", ""]
        lines += _table(["metric", "value", "warn above", "fail above", "status"],
                        [[d["metric"], d["value"], d["warn"], d["fail"], d["status"]]
                         for d in v["drift"]])
    else:
        lines += ["", f"Drift: {v.get('drift_reference') or 'not measured'}."]
    return lines


def _evaluation(facts: dict) -> list[str]:
    s, model = facts["scores"], facts["model"]
    b = s["bootstrap"]
    many = s["models"] > 1
    lines = ["## Evaluation",
             "",
             f"{_split(facts).capitalize()}. UA: mean per-class recall (chance "
             f"{s['chance_ua']:.2f}); WA: accuracy"
             + ("; each the mean over the (fold, seed) models" if many else "")
             + f". 95 % intervals: {b['samples']} bootstrap resamples within each fold "
             f"(seed {b['seed']}).",
             ""]
    lines += _table(["", "value", "95 % interval"] + (["std over models"] if many else []),
                    [[name.upper(), _f(s[name]),
                      f"{_f(s[f'{name}_ci95'][0])} – {_f(s[f'{name}_ci95'][1])}",
                      *([_f(s[f"{name}_std"])] if many else [])] for name in ("ua", "wa")])
    lines += ["", "Per class (pooled):", ""]
    lines += _table(["class", "recall", "precision", "F1", "support"],
                    [[c, _f(v["recall"]), _f(v["precision"]), _f(v["f1"]), v["support"]]
                     for c, v in facts["per_class"].items()])
    lines += ["", "By test session, speaker gender (pooled) and kind of dialog ("
              + ("mean over the models" if many else "one model") + "):", ""]
    lines += _table(["group", "UA", "WA", "n"],
                    [[f"session {k}", _f(v["ua"]), _f(v["wa"]), v["n"]]
                     for k, v in facts["per_session"].items()]
                    + [[GENDERS.get(k, k), _f(v["ua"]), _f(v["wa"]), v["n"]]
                       for k, v in facts["per_gender"].items()]
                    + [[k, _f(v["ua"]), _f(v["wa"]), v["n"]]
                       for k, v in facts["per_subset"].items()])
    lines.append("")
    t = facts["transcripts"]
    if t["asr"]:
        a = t["asr"]
        wer = "n/a" if a["wer"] is None else _f(a["wer"])
        lines.append(f"Transcripts: recognised by `{a['recognizer']}` (word error rate {wer} "
                     f"over {a['words']} words), not the corpus'; trained on "
                     f"{'recognised' if t['trained_on'] == 'asr' else 'the corpus'} ones.")
    elif t["trained_on"] == "asr":
        lines.append("Transcripts: trained on recognised ones, tested on the corpus'.")
    if facts["ablation"]:
        a = facts["ablation"]
        lines.append(f"Modality ablation: UA {_f(a['ua_without_speech'])} without speech, "
                     f"{_f(a['ua_without_text'])} without the words.")
    else:
        lines.append(f"Modality ablation: none (`{model['kind']}` hears one modality).")
    attention = facts["attention"] or {}
    if attention.get("words"):
        lines.append(f"Attention lift {attention['lift']:.2f} (1 = none"
                     + (f"; the diagonal prior alone {attention['prior_lift']:.2f}, so "
                        f"{attention['lift_over_prior']:.2f} x the prior"
                        if "prior_lift" in attention else "")
                     + f"): a word's attention on its own speech "
                     f"{attention['mass_in_own_word']:.3f}, spread evenly "
                     f"{attention['uniform_mass']:.3f} ({attention['words']} words).")
    else:
        lines.append("Attention lift: not measured (no attention, or no forced alignment).")
    return lines


def _gate(facts: dict) -> list[str]:
    """The decision against the champion (its reason carries the numbers it rests on), and,
    when the drift check against the champion's data could not be made, what that means."""
    gate, model = facts["gate"], facts["model"]
    n, infra = gate["numbers"], gate["infra_check"]
    lines = ["## Promotion gate",
             "",
             f"**{'Promoted to champion' if gate['promoted'] else 'Not promoted'}** (champion "
             f"now: {_version(gate['champion_version'])}): {gate['reason']}.",
             "",
             f"Floor UA {n['ua_floor']}, tolerance {n['tolerance']}, on the seed ensemble. "
             f"Served through MLflow: "
             f"{'ok' if infra['ok'] else 'FAILED'} on {infra.get('n', 0)} utterances"
             + (f" (max |Δp| {infra['max_abs_diff_vs_evaluation']:.1e})"
                if "max_abs_diff_vs_evaluation" in infra else "")
             + (f": {infra['error']}" if infra.get("error") else "") + "."]
    if facts["validation"].get("drift_unavailable") and not gate["promoted"]:
        lines += ["",
                  "The gate promotes no version whose data it could not check for drift "
                  "against the champion's (why: under Training data). Once a person has, "
                  f"`emoalign promote --name {model['name']} --version {model['version']} "
                  '--reason "..."` makes it the champion.']
    return lines


def _limitations(facts: dict) -> list[str]:
    data, s, model = facts["data"], facts["scores"], facts["model"]
    lines = ["## Limitations", ""]
    if data["sample_corpus"]:
        lines += [f"- {SAMPLE_LIMITATION} Synthesised voices, emotions set by rules: these "
                  "scores say nothing of how it hears people."]
    else:
        lines += ["- IEMOCAP is ten actors in five sessions, acted and scripted English "
                  "recorded in one studio: expect less on spontaneous speech, other accents, "
                  "microphones and rooms."]
    lines += [f"- {s['n_utterances']} test utterances: one of them moves WA by about "
              f"{1 / max(1, s['n_utterances']):.3f}; read the intervals, not the third "
              "decimal.",
              f"- Only {', '.join(model['classes'])}: any other emotion is forced into one of "
              "them."]
    if "scripted" in facts["per_subset"]:
        lines.append("- Scripted lines recur in every session, so a model that reads words "
                     "has seen them: trust the improvised scores.")
    for member, missing in facts["missing_classes"].items():
        lines.append(f"- {member}'s test session has no {', '.join(missing)}: its UA "
                     "averages the other classes.")
    check = data["full_release_check"]
    if check.get("applies") and not check.get("ok", True):
        lines.append("- The release's 4-class counts differ from IEMOCAP's published ones.")
    return lines


def _lineage(facts: dict) -> list[str]:
    model, data, lineage = facts["model"], facts["data"], facts["lineage"]
    rows = [["registered", f"`{model['uri']}`"], ["MLflow run", f"`{model['run_id']}`"],
            ["pipeline run", f"`{lineage['pipeline_run']}`"],
            ["code", f"`{lineage['git_sha']}`"
                     + (" (uncommitted changes)" if lineage["git_dirty"] == "true" else "")],
            ["data hash", f"`{data['data_hash']}`"],
            ["config sha256", f"`{lineage['config_sha256']}`"], ["seed", lineage["seed"]],
            # The CUDA build's versions say nothing of a model trained on the CPU.
            ["trained on", ", ".join(
                f"{key[4:]} `{value}`" for key, value in facts["environment"].items()
                if facts["environment"].get("env.device") != "cpu"
                or key not in ("env.cuda_version", "env.cudnn_version"))]]
    return ["## Lineage and compute environment", "", *_table(["", ""], rows), "",
            "Rebuild and check it:", "", "```sh", facts["audit"], "```"]


# ---- where the card goes ------------------------------------------------------------------

def write_card(facts: dict, out_dir: Path) -> Path:
    """model_card.md in out_dir (the register task's folder), scrubbed of credentials."""
    from components.registry.store import scrub

    path = Path(out_dir) / CARD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(scrub(render(facts)))
    return path


def description(card: str, where: str) -> str:
    """The card as the version's description: whole when it fits the registry's field; else
    without its front matter (metadata for the Hugging Face hub, not for a reader) and, if
    still too long, cut at a section, pointing at the whole card (`where`)."""
    if len(card) <= DESCRIPTION_LIMIT:
        return card
    note = f"\n\n{SHORTENED} `{where}`.)*\n"
    body = card[card.index("\n---\n", 3) + 5:].lstrip() if card.startswith("---\n") else card
    if len(body) + len(note) > DESCRIPTION_LIMIT:
        body = body[:DESCRIPTION_LIMIT - len(note)]
        body = body[:body.rfind("\n## ")] if "\n## " in body else body
    return body.rstrip() + note


def publish(client, name: str, version: str, run_id: str, path: Path) -> str:
    """Log the card as an artifact of the version's run, tag the version with it and set it
    as the version's description; returns the artifact's URI."""
    folder = artifact_dir(name, version)
    client.log_artifact(run_id, str(path), folder)
    uri = f"runs:/{run_id}/{folder}/{CARD_FILE}"
    client.set_model_version_tag(name, version, CARD_TAG, uri)
    client.update_model_version(name, version, description=description(
        path.read_text(), f"emoalign card models:/{name}/{version}"))
    return uri


def read(client, version) -> str:
    """A registered version's card: its description when whole, else the logged artifact."""
    text = version.description or ""
    if text.startswith("---\n") and SHORTENED not in text:
        return text  # the whole card
    uri = version.tags.get(CARD_TAG)
    if not uri:
        raise RegistryError(f"version {version.version} of {version.name!r} has no model "
                            "card (registered before cards were written)")
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory() as scratch:
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=uri, dst_path=scratch, tracking_uri=client.tracking_uri)
        except Exception as e:  # broad on purpose: decides nothing, says it in one line
            raise RegistryError(f"cannot read the model card of version {version.version} of "
                                f"{version.name!r} ({uri}): "
                                f"{str(e).splitlines()[0][:200]}") from None
        return Path(local).read_text()
