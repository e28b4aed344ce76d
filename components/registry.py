"""Tracking and the model registry: one MLflow run per pipeline run, every model a version
of the registered model, and a promotion gate that decides on evidence whether the new
version (alias `challenger`) replaces the one in service (alias `champion`).

MLflow keeps no record of alias moves, so every move (by the gate, by hand, a rollback) is
appended to a history kept as tags on the registered model itself: it lives wherever the
registry lives, readable by anyone who can read the registry.
"""

import getpass
import importlib.metadata
import json
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd

from components.config import Config
from components.errors import UserError
from components.lineage import file_sha256

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STORE = PROJECT_ROOT / "runs" / "mlflow.db"
CHAMPION, CHALLENGER = "champion", "challenger"
HISTORY_PREFIX = "history."
LOCK_TAG = "emoalign.gate_lock"
LOCK_LEASE_S = 900  # a gate holding the lock longer than this has died
REGISTRATION_FILENAME = "registration.json"
RUN_FILENAME = "mlflow_run.json"
# Environment variables whose values must never reach the tracking store.
SECRET_NAME_RE = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|ACCESS_KEY|API_KEY|CREDENTIAL",
                            re.IGNORECASE)


class RegistryError(UserError):
    """The tracking server or registry cannot do what was asked; the message says why."""


# ---- connection -------------------------------------------------------------------------

def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set, else the SQLite store under runs/ (an absolute path)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_STORE}"


def redact(uri: str) -> str:
    """The URI without user name and password, fit for logs and messages."""
    parts = urlsplit(uri)
    if parts.password is None and parts.username is None:
        return uri
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def _artifact_location(uri: str) -> str | None:
    """Beside a SQLite store, artifacts go to <store folder>/mlartifacts (an absolute path,
    not MLflow's default of ./mlruns under whatever the working directory is)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return None


def connect(uri: str | None = None, timeout_s: float = 10.0,
            consequence: str = "nothing was tracked or registered"):
    """A client for a store that answers, or a RegistryError naming it (and saying what
    that means). `emoalign run` calls it before any work, so a dead server costs nothing."""
    import logging

    import requests
    from mlflow import MlflowClient

    # A new SQLite store announces its table migrations on stderr; nothing a user acts on.
    for noisy in ("mlflow.store.db.utils", "alembic.runtime.migration"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    uri = uri or tracking_uri()
    if uri.startswith(("http://", "https://")):
        try:
            response = requests.get(uri.rstrip("/") + "/health", timeout=timeout_s)
            response.raise_for_status()
        except requests.RequestException as e:
            reason = type(e).__name__ if not isinstance(e, requests.HTTPError) else str(e)
            raise RegistryError(f"MLflow tracking server {redact(uri)} is unreachable "
                                f"({reason}); {consequence}") from None
    elif uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RegistryError(f"cannot create the MLflow store folder {path.parent}: "
                                f"{e.strerror}") from None
    try:
        with _store_creation_lock(uri):
            # Both stores create and migrate their tables when first opened.
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            client.search_experiments(max_results=1)
            client.search_registered_models(max_results=1)
    except Exception as e:
        raise RegistryError(f"MLflow tracking store {redact(uri)} does not answer: "
                            f"{str(e).splitlines()[0][:200]}") from None
    # MLflow's module-level functions (models:/ URIs, downloads) must see the same store.
    # (The registry follows the tracking URI; setting it too would export
    # MLFLOW_REGISTRY_URI to every subprocess started later.)
    import mlflow

    mlflow.set_tracking_uri(uri)
    return client


@contextmanager
def _store_creation_lock(uri: str):
    """Two processes opening a new SQLite store at once would both create its tables (and
    one fail on "duplicate column"); they take turns on a lock file beside it."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    with open(Path(uri[len("sqlite:///"):]).with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_experiment(client, name: str) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_location(
            client.tracking_uri))
    except MlflowException:  # created by a run started at the same moment
        return client.get_experiment_by_name(name).experiment_id


# ---- secrets ----------------------------------------------------------------------------

def _secret_values() -> list[str]:
    values = [v for k, v in os.environ.items() if SECRET_NAME_RE.search(k) and len(v) >= 6]
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        password = urlsplit(os.environ.get(key, "")).password
        if password and len(password) >= 4:
            values.append(password)
    return sorted(set(values), key=len, reverse=True)


def scrub(text: str, secrets: list[str] | None = None) -> str:
    """Replace every credential found in the environment by ***."""
    for secret in _secret_values() if secrets is None else secrets:
        text = text.replace(secret, "***")
    return text


def _scrubbed_copy(paths: list[Path], folder: Path) -> Path:
    """Text artifacts copied through `scrub`; binary files (PNG, Parquet) copied as they are."""
    secrets = _secret_values()
    folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        target = folder / path.name
        if path.suffix in (".json", ".yaml", ".yml", ".csv", ".md", ".html", ".txt", ".dvc",
                           ".log"):
            target.write_text(scrub(path.read_text(errors="replace"), secrets))
        else:
            shutil.copyfile(path, target)
    return folder


# ---- tracking ---------------------------------------------------------------------------

def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = ",".join(map(str, value)) if isinstance(value, list) \
                else str(value)
    return out


def pip_freeze() -> str:
    """The installed distributions, as `pip freeze` would list them (without running pip)."""
    pins = {(d.metadata["Name"] or "").lower(): d.version
            for d in importlib.metadata.distributions() if d.metadata["Name"]}
    return "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))


@dataclass
class StepOutputs:
    """Where the earlier steps left their outputs."""

    manifest_dir: Path     # ingest: manifest.parquet, ingest_report.json
    validated_dir: Path    # validate: kept manifest, quarantine, GX result, reports, stats
    model_dir: Path        # train: <fold>/model.pt, history.json, fold.json, train_summary
    evaluation_dir: Path   # evaluate: metrics.json, predictions.csv, plots, report.md


@dataclass
class Lineage:
    corpus: str
    data_hash: str
    git_sha: str
    git_dirty: bool
    pipeline_run: str


def lineage_tags(lineage: Lineage, config: Config, manifest_sha256: str,
                 validation: str) -> dict[str, str]:
    return {"git_sha": lineage.git_sha or "unknown", "git_dirty": str(lineage.git_dirty).lower(),
            "data_hash": lineage.data_hash, "manifest_sha256": manifest_sha256,
            "config_sha256": config.sha256(), "seed": str(config.seed),
            "pipeline_run": lineage.pipeline_run, "validation": validation,
            "corpus": lineage.corpus}


def track(outputs: StepOutputs, config: Config, lineage: Lineage, out_dir: Path) -> dict:
    """Log one pipeline run to MLflow: resolved config as params, per-epoch and final metrics,
    reports and plots as artifacts, the dataset as an input, lineage as tags."""
    import mlflow
    from mlflow.entities import Metric

    from components import evaluate, ingest, train, validate

    client = connect()
    experiment_id = ensure_experiment(client, config.registry.experiment)
    report = json.loads((outputs.manifest_dir / ingest.REPORT_FILENAME).read_text())
    checks = json.loads((outputs.validated_dir / validate.REPORT_FILENAME).read_text())
    metrics = json.loads((outputs.evaluation_dir / evaluate.METRICS_FILENAME).read_text())
    manifest_sha = file_sha256(outputs.manifest_dir / ingest.MANIFEST_FILENAME)
    n_warnings = checks["counts"].get("quarantined", 0)
    validation = "passed" if not n_warnings else f"passed with {n_warnings} quarantined"
    tags = lineage_tags(lineage, config, manifest_sha, validation)
    secrets = _secret_values()

    mlflow.set_tracking_uri(client.tracking_uri)
    with mlflow.start_run(experiment_id=experiment_id, run_name=lineage.pipeline_run,
                          tags={k: scrub(v, secrets) for k, v in tags.items()}) as run:
        run_id = run.info.run_id
        mlflow.log_params({k: scrub(v, secrets) for k, v in flatten(config.to_dict()).items()})
        now = int(time.time() * 1000)
        values = {"ingest/label_blocks": report["n_label_blocks"],
                  "ingest/labelled": report["n_labelled"],
                  "ingest/problems": report["problem_count"],
                  **{f"validate/{k}": v for k, v in checks["counts"].items()
                     if isinstance(v, (int, float))},
                  "evaluate/wa": metrics["wa"], "evaluate/ua": metrics["ua"],
                  "evaluate/wa_std": metrics["wa_std"], "evaluate/ua_std": metrics["ua_std"],
                  "evaluate/n_test": metrics["n_test"],
                  **{f"evaluate/recall_{c}": v["recall"] for c, v in
                     metrics["per_class"].items()},
                  **{f"evaluate/{k}": v for k, v in metrics.get("ablation", {}).items()},
                  **{f"evaluate/attention_{k}": v
                     for k, v in metrics.get("attention_alignment", {}).items()
                     if k in ("mass_in_own_word", "uniform_mass", "lift")}}
        series = [Metric(key, float(value), now, 0) for key, value in values.items()]
        for fold_dir in sorted(outputs.model_dir.glob(f"*/{train.HISTORY_FILENAME}")):
            for epoch in json.loads(fold_dir.read_text()):
                for key in ("loss", "val_ua", "val_wa"):
                    series.append(Metric(f"train/{fold_dir.parent.name}/{key}",
                                         float(epoch[key]), now, epoch["epoch"]))
        for start in range(0, len(series), 500):
            client.log_batch(run_id, metrics=series[start:start + 500])

        with tempfile.TemporaryDirectory() as scratch:
            scratch = Path(scratch)
            (scratch / "config.resolved.yaml").write_text(config.to_yaml())
            (scratch / "pip_freeze.txt").write_text(pip_freeze())
            run_files = [scratch / "config.resolved.yaml", scratch / "pip_freeze.txt"]
            if Path(lineage.corpus).resolve() == (PROJECT_ROOT / "data").resolve() and \
                    (PROJECT_ROOT / "data.dvc").is_file():
                run_files.append(PROJECT_ROOT / "data.dvc")
            groups = {
                "run": run_files,
                "ingest": [outputs.manifest_dir / ingest.REPORT_FILENAME],
                "validate": [p for p in sorted(outputs.validated_dir.iterdir())
                             if p.is_file() and p.suffix != ".parquet"],
                "train": [p for p in [outputs.model_dir / train.SUMMARY_FILENAME,
                                      *sorted(outputs.model_dir.glob("*/history.json")),
                                      *sorted(outputs.model_dir.glob("*/fold.json"))]
                          if p.is_file()],
                "evaluate": [p for p in sorted(outputs.evaluation_dir.iterdir()) if p.is_file()],
            }
            for group, paths in groups.items():
                # Fold files share names; keep them apart by fold.
                by_folder: dict[str, list[Path]] = {}
                for p in paths:
                    sub = p.parent.name if group == "train" and p.parent != outputs.model_dir \
                        else ""
                    by_folder.setdefault(sub, []).append(p)
                for sub, files in by_folder.items():
                    copied = _scrubbed_copy(files, scratch / "copy" / group / (sub or "_"))
                    mlflow.log_artifacts(str(copied), f"{group}/{sub}".rstrip("/"))

        from components.validate import MANIFEST_FILENAME as KEPT_MANIFEST

        kept = pd.read_parquet(outputs.validated_dir / KEPT_MANIFEST)
        columns = [c for c in ("utt_id", "session", "speaker", "label", "duration_s",
                               "transcript") if c in kept.columns]
        dataset = mlflow.data.from_pandas(kept[columns], source=lineage.corpus,
                                          name="iemocap", targets="label",
                                          digest=lineage.data_hash[:36])
        mlflow.log_input(dataset, context="training")
    result = {"run_id": run_id, "experiment_id": experiment_id, "tags": tags,
              "tracking_uri": redact(client.tracking_uri)}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RUN_FILENAME).write_text(json.dumps(result, indent=1))
    return result


# ---- history ----------------------------------------------------------------------------

def who() -> str:
    try:
        return os.environ.get("EMOALIGN_USER") or getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return f"uid {os.getuid()}"


def append_history(client, name: str, entry: dict) -> dict:
    entry = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), **entry}
    # Nanoseconds plus a random suffix: two writers never pick the same key.
    key = f"{HISTORY_PREFIX}{time.time_ns():020d}.{uuid.uuid4().hex[:6]}"
    client.set_registered_model_tag(name, key, scrub(json.dumps(entry, sort_keys=True)))
    return entry


def read_history(client, name: str) -> list[dict]:
    model = _registered_model(client, name)
    return [json.loads(v) for k, v in sorted(model.tags.items()) if k.startswith(HISTORY_PREFIX)]


def _registered_model(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException:
        raise RegistryError(f"no registered model named {name!r} in "
                            f"{redact(client.tracking_uri)}") from None


def _alias_version(client, name: str, alias: str) -> str | None:
    version = _registered_model(client, name).aliases.get(alias)
    return None if version is None else str(version)


def move_alias(client, name: str, alias: str, version: str, action: str, reason: str,
               numbers: dict | None = None, actor: str | None = None) -> dict:
    """Point `alias` at `version` and record the move."""
    before = _alias_version(client, name, alias)
    client.set_registered_model_alias(name, alias, version)
    return append_history(client, name, {
        "action": action, "alias": alias, "from": before, "to": str(version),
        "who": actor or who(), "reason": reason, "numbers": numbers or {}})


@contextmanager
def gate_lock(client, name: str, timeout_s: float = 1200.0):
    """One gate at a time per registered model, also across machines: a lease written as a
    tag, then read back after a pause; whoever reads their own lease holds the lock."""
    me = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + timeout_s
    while True:
        holder = _registered_model(client, name).tags.get(LOCK_TAG)
        if holder is None or time.time() - float(holder.rsplit("|", 1)[1]) > LOCK_LEASE_S:
            client.set_registered_model_tag(name, LOCK_TAG, f"{me}|{time.time()}")
            time.sleep(0.5)
            if _registered_model(client, name).tags.get(LOCK_TAG, "").startswith(me + "|"):
                break
        if time.monotonic() > deadline:
            raise RegistryError(f"registered model {name!r} stayed locked by {holder} for "
                                f"{timeout_s:.0f} s")
        time.sleep(0.3 + 0.4 * np.random.default_rng().random())
    try:
        yield
    finally:
        if _registered_model(client, name).tags.get(LOCK_TAG, "").startswith(me + "|"):
            client.delete_registered_model_tag(name, LOCK_TAG)


# ---- the gate ---------------------------------------------------------------------------

def unweighted_accuracy(labels: np.ndarray, predicted: np.ndarray, n_classes: int
                        ) -> np.ndarray:
    """UA of each row of (S, N) label/prediction arrays: the mean recall over the classes
    present in that row (a bootstrap sample may miss a rare class)."""
    labels, predicted = np.atleast_2d(labels), np.atleast_2d(predicted)
    recalls = []
    for c in range(n_classes):
        support = (labels == c).sum(1)
        hits = ((labels == c) & (predicted == c)).sum(1)
        recalls.append(np.where(support > 0, hits / np.maximum(support, 1), np.nan))
    return np.nanmean(np.stack(recalls), axis=0)


def paired_bootstrap(labels, challenger, champion, n_classes: int, samples: int,
                     seed: int) -> tuple[float, float]:
    """95 % interval of UA(challenger) - UA(champion), both scored on the same resampled
    utterances each time."""
    labels, challenger, champion = map(np.asarray, (labels, challenger, champion))
    idx = np.random.default_rng(seed).integers(0, len(labels), size=(samples, len(labels)))
    deltas = (unweighted_accuracy(labels[idx], challenger[idx], n_classes)
              - unweighted_accuracy(labels[idx], champion[idx], n_classes))
    low, high = np.percentile(deltas, [2.5, 97.5])
    return float(low), float(high)


def gate_data(outputs: StepOutputs) -> pd.DataFrame:
    """The challenger's test utterances with its predictions, wav paths and transcripts."""
    from components import evaluate
    from components.validate import MANIFEST_FILENAME as KEPT_MANIFEST

    predictions = pd.read_csv(outputs.evaluation_dir / evaluate.PREDICTIONS_FILENAME)
    kept = pd.read_parquet(outputs.validated_dir / KEPT_MANIFEST)[
        ["utt_id", "wav_path", "transcript"]]
    return predictions.merge(kept, on="utt_id", how="left", validate="one_to_one")


def model_input(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"wav": frame["wav_path"].astype(str),
                         "transcript": frame["transcript"].fillna("").astype(str),
                         "speaker": frame["speaker"].astype(str)})


def infra_check(model_uri: str, data: pd.DataFrame, classes: list[str], n: int,
                compare_probabilities: bool) -> dict:
    """Load the registered version through MLflow and score a few test utterances, as
    serving will. Under holdout its probabilities must match evaluation's."""
    from components.pyfunc import load

    sample = data.head(n)
    try:
        loaded = load(model_uri)
        out = loaded.predict(model_input(sample))
    except Exception as e:
        return {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    probs = out[[f"p_{c}" for c in classes]].to_numpy()
    ok = bool(np.isfinite(probs).all() and np.allclose(probs.sum(1), 1, atol=1e-4)
              and set(out["label"]) <= set(classes))
    result = {"ok": ok, "n": int(len(sample))}
    if compare_probabilities:
        diff = float(np.abs(probs - sample[[f"p_{c}" for c in classes]].to_numpy()).max())
        result["max_abs_diff_vs_evaluation"] = diff
        result["ok"] = ok and diff < 1e-3
    if not result["ok"] and "error" not in result:
        result["error"] = "served probabilities are invalid or differ from evaluation's"
    return result


def score_champion(model_uri: str, data: pd.DataFrame, classes: list[str]) -> np.ndarray:
    """The champion's predicted class ids on the challenger's test utterances, now."""
    from components.pyfunc import load

    loaded = load(model_uri)
    out = loaded.predict(model_input(data))
    missing = [c for c in classes if f"p_{c}" not in out.columns]
    if missing:
        raise RegistryError(f"the champion predicts other classes (lacks {missing})")
    return out["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()


def decide(config: Config, challenger_ua: float, infra: dict, champion: dict | None
           ) -> tuple[bool, str]:
    floor, tolerance = config.registry.ua_floor, config.registry.tolerance
    if challenger_ua < floor:
        return False, f"UA {challenger_ua:.4f} is below the floor {floor:.2f}"
    if not infra["ok"]:
        return False, f"infra check failed: {infra.get('error')}"
    if champion is None:
        return True, f"UA {challenger_ua:.4f} >= floor {floor:.2f}; no champion yet"
    if "error" in champion:
        return True, (f"UA {challenger_ua:.4f} >= floor; the champion (version "
                      f"{champion['version']}) could not be re-scored: {champion['error']}")
    delta = challenger_ua - champion["ua"]
    verdict = "not worse than" if delta >= -tolerance else "worse than"
    text = (f"UA {challenger_ua:.4f} vs champion v{champion['version']} {champion['ua']:.4f} "
            f"on the same {champion['n']} test utterances: delta {delta:+.4f} "
            f"(95% CI {champion['ci_low']:+.4f}..{champion['ci_high']:+.4f}), "
            f"{verdict} the champion within tolerance {tolerance:.3f}")
    return delta >= -tolerance, text


def _sweep_incomplete(client, name: str) -> list[str]:
    """Versions a crashed register step left without a gate decision: say so on them."""
    swept = []
    for version in client.search_model_versions(f"name='{name}'"):
        if "gate.decision" not in version.tags and \
                time.time() - version.creation_timestamp / 1000 > 60:
            client.set_model_version_tag(name, version.version, "gate.decision", "incomplete")
            client.set_model_version_tag(name, version.version, "gate.reason",
                                         "its register step stopped before the gate decided")
            swept.append(version.version)
    return swept


def register(outputs: StepOutputs, config: Config, run_id: str, out_dir: Path) -> dict:
    """Log the pyfunc into the pipeline's MLflow run, register it as a new version (alias
    challenger), run the gate and move `champion` when it passes."""
    import mlflow

    from components import train

    client = connect()
    name = config.registry.model_name
    run = client.get_run(run_id)
    tags = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}
    metrics = json.loads((outputs.evaluation_dir / "metrics.json").read_text())
    classes = metrics["classes"]
    data = gate_data(outputs)
    bundles = {p.parent.name: p for p in sorted(outputs.model_dir.glob(
        f"*/{train.MODEL_FILENAME}"))}
    shortest = data.assign(size=data["wav_path"].map(lambda p: Path(p).stat().st_size)) \
        .sort_values(["size", "utt_id"]).iloc[0]
    from components.pyfunc import wav_example

    example = wav_example(shortest["wav_path"], shortest["transcript"], shortest["speaker"])

    mlflow.set_tracking_uri(client.tracking_uri)
    with mlflow.start_run(run_id=run_id):
        from components.pyfunc import log_model

        info = log_model(bundles, classes, example)
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description=(
            "IEMOCAP speech + text emotion recognition (emoalign). Aliases: champion = "
            "in service, challenger = newest candidate. history.* tags record every move."))
    except MlflowException:
        pass  # it exists
    swept = _sweep_incomplete(client, name)
    version = mlflow.register_model(info.model_uri, name, tags=tags).version
    try:
        move_alias(client, name, CHALLENGER, version, "candidate",
                   f"pipeline run {tags.get('pipeline_run')}", actor="emoalign register")
        challenger_ua = float(metrics["ua"])
        infra = infra_check(f"models:/{name}/{version}", data, classes,
                            config.registry.infra_check_utterances,
                            compare_probabilities=config.protocol == "holdout")
        label_ids = data["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
        mine = data["predicted"].map({c: i for i, c in enumerate(classes)}).to_numpy()
        with gate_lock(client, name):
            champion_version = _alias_version(client, name, CHAMPION)
            champion = None
            if champion_version is not None:
                champion = {"version": champion_version, "n": int(len(data))}
                try:
                    theirs = score_champion(f"models:/{name}/{champion_version}", data,
                                            classes)
                    champion["ua"] = float(unweighted_accuracy(label_ids, theirs,
                                                               len(classes))[0])
                    challenger_ua = float(unweighted_accuracy(label_ids, mine,
                                                              len(classes))[0])
                    champion["ci_low"], champion["ci_high"] = paired_bootstrap(
                        label_ids, mine, theirs, len(classes),
                        config.registry.bootstrap_samples, config.seed)
                except Exception as e:
                    champion["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            promoted, reason = decide(config, challenger_ua, infra, champion)
            numbers = {"ua": round(challenger_ua, 6), "ua_floor": config.registry.ua_floor,
                       "tolerance": config.registry.tolerance, "n_test": int(len(data)),
                       "infra_ok": infra["ok"]}
            if champion and "ua" in champion:
                numbers.update(champion_version=champion["version"],
                               champion_ua=round(champion["ua"], 6),
                               delta_ua=round(challenger_ua - champion["ua"], 6),
                               delta_ua_ci95=[round(champion["ci_low"], 6),
                                              round(champion["ci_high"], 6)])
            decision_tags = {"gate.decision": "promoted" if promoted else "rejected",
                             "gate.reason": reason, "gate.numbers": json.dumps(numbers),
                             "gate.infra_check": json.dumps(infra)}
            for key, value in decision_tags.items():
                client.set_model_version_tag(name, version, key, scrub(value))
            client.update_model_version(name, version, description=(
                f"{'Promoted to champion' if promoted else 'Not promoted'}: {reason}. "
                f"Pipeline run {tags.get('pipeline_run')}, data {tags.get('data_hash')}, "
                f"code {tags.get('git_sha')}."))
            if promoted:
                move_alias(client, name, CHAMPION, version, "auto", reason, numbers,
                           actor="emoalign gate")
            champion_now = _alias_version(client, name, CHAMPION)
    except BaseException:
        # Never leave a version that looks usable but was never judged.
        try:
            client.set_model_version_tag(name, version, "gate.decision", "incomplete")
        except Exception:
            pass
        raise
    result = {"model_name": name, "model_version": str(version), "promoted": promoted,
              "reason": reason, "champion_version": champion_now, "mlflow_run_id": run_id,
              "numbers": numbers, "infra_check": infra, "swept_incomplete": swept,
              "model_uri": f"models:/{name}/{version}"}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / REGISTRATION_FILENAME).write_text(json.dumps(result, indent=1))
    return result


# ---- retraining ------------------------------------------------------------------------

def retrain_reason(config: Config, data_hash: str, git_sha: str) -> str | None:
    """Why the pipeline should train now, or None when the champion was trained from this
    very data, code and config (a scheduled run then ends early)."""
    client = connect()
    name = config.registry.model_name
    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except Exception:
        return f"registered model {name!r} has no champion yet"
    tags = version.tags
    if tags.get("data_hash") != data_hash:
        return f"data changed: {tags.get('data_hash')} -> {data_hash}"
    if not git_sha or tags.get("git_sha") != git_sha or tags.get("git_dirty") == "true":
        return f"code changed: {tags.get('git_sha', '?')[:12]} -> {(git_sha or '?')[:12]}"
    if tags.get("config_sha256") != config.sha256():
        return "config changed"
    return None


# ---- model URIs -------------------------------------------------------------------------

MODEL_URI_RE = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")


def resolve(client, uri: str):
    """models:/NAME/VERSION or models:/NAME@ALIAS -> the ModelVersion, or a one-line error."""
    from mlflow.exceptions import MlflowException

    m = MODEL_URI_RE.match(uri.strip())
    if not m:
        raise RegistryError(f"{uri!r} is not a model URI; use models:/NAME/VERSION or "
                            "models:/NAME@ALIAS")
    name = m["name"]
    _registered_model(client, name)
    try:
        if m["alias"]:
            return client.get_model_version_by_alias(name, m["alias"])
        return client.get_model_version(name, m["version"])
    except MlflowException:
        what = f"alias {m['alias']!r}" if m["alias"] else f"version {m['version']}"
        raise RegistryError(f"registered model {name!r} has no {what}") from None


def promote(name: str, version: str, reason: str) -> dict:
    client = connect()
    resolve(client, f"models:/{name}/{version}")
    with gate_lock(client, name):
        return move_alias(client, name, CHAMPION, str(version), "manual", reason)


def rollback(name: str, reason: str) -> dict:
    """Champion back to the version it replaced last."""
    client = connect()
    with gate_lock(client, name):
        current = _alias_version(client, name, CHAMPION)
        moves = [e for e in read_history(client, name)
                 if e["alias"] == CHAMPION and e["to"] == current and e["from"]]
        if current is None or not moves:
            raise RegistryError(f"registered model {name!r} has no earlier champion to roll "
                                "back to")
        return move_alias(client, name, CHAMPION, moves[-1]["from"], "rollback", reason)
