"""Tracking: one MLflow run per pipeline run, holding the resolved config as params, the
final and per-epoch metrics, every report and plot as artifacts, the dataset as an input,
and the lineage as tags."""

import importlib.metadata
import json
import tempfile
import time
from pathlib import Path

from components.config import Config
from components.lineage import (DEFAULT_DATA, DVC_POINTER, Lineage, code_identity,
                                file_sha256)
from components.outputs import Evaluation, StepOutputs, Tracked
from components.registry.drift import drift_tags
from components.registry.store import (artifact_access, connect, ensure_experiment, redact,
                                       scrub, scrubbed_copy, secret_values)

# Where in the run's artifacts `audit` finds what the run was made from and scored.
CONFIG_ARTIFACT = "run/config.resolved.yaml"
METRICS_ARTIFACT = f"evaluate/{Evaluation.METRICS}"
LOG_BATCH = 500  # metrics per request; MLflow refuses more than 1000


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = ",".join(map(str, value)) if isinstance(value, list) \
                else str(value)
    return out


def config_params(config: Config, secrets: list[str] | None = None) -> dict[str, str]:
    """The resolved config as the run's params: every key, `section.key` -> its value as
    text, credentials masked. `emoalign retrain` reads the champion's back from them."""
    return {k: scrub(v, secrets) for k, v in flatten(config.to_dict()).items()}


def pip_freeze() -> str:
    """The installed distributions, as `pip freeze` would list them (without running pip)."""
    pins = {(d.metadata["Name"] or "").lower(): d.version
            for d in importlib.metadata.distributions() if d.metadata["Name"]}
    return "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))


def lineage_tags(lineage: Lineage, config: Config, manifest_sha256: str,
                 validation: str) -> dict[str, str]:
    """The run's lineage, which its registered version inherits: the commit, the data and
    config hashes, and the model code's identity (code_sha256, code_files: the files
    this process imports, as the train tasks beside it do)."""
    return {"git_sha": lineage.git_sha or "unknown", "git_dirty": str(lineage.git_dirty).lower(),
            "data_hash": lineage.data_hash, "manifest_sha256": manifest_sha256,
            "config_sha256": config.sha256(), "seed": str(config.seed),
            "pipeline_run": lineage.pipeline_run, "validation": validation,
            "corpus": lineage.corpus, **code_identity().tags()}


def track(outputs: StepOutputs, config: Config, lineage: Lineage, out_dir: Path) -> dict:
    """Log one pipeline run to MLflow; returns (and writes to out_dir) its run id and tags."""
    import mlflow

    client = connect()
    experiment_id = ensure_experiment(client, config.registry.experiment)
    quarantined = outputs.validated.report()["counts"].get("quarantined", 0)
    validation = "passed" if not quarantined else f"passed with {quarantined} quarantined"
    tags = {**lineage_tags(lineage, config, file_sha256(outputs.ingested.manifest_path),
                           validation),
            # Where the weights were computed (the train task's node, not this one).
            **outputs.trained.summary().get("environment", {}),
            # How the data moved since the champion's (registered versions inherit these).
            **drift_tags(outputs.validated.report())}
    secrets = secret_values()

    mlflow.set_tracking_uri(client.tracking_uri)
    with mlflow.start_run(experiment_id=experiment_id, run_name=lineage.pipeline_run,
                          tags={k: scrub(v, secrets) for k, v in tags.items()}) as run:
        run_id = run.info.run_id
        mlflow.log_params(config_params(config, secrets))
        series = _metric_series(outputs, int(time.time() * 1000))
        for start in range(0, len(series), LOG_BATCH):
            client.log_batch(run_id, metrics=series[start:start + LOG_BATCH])
        with tempfile.TemporaryDirectory() as scratch, artifact_access(
                client, "store the run's files", "the run is marked failed; nothing was "
                "registered"):
            _log_artifacts(_artifact_groups(outputs, config, lineage, Path(scratch)),
                           outputs.model_dir, Path(scratch))
        _log_dataset(outputs, lineage)
        children = _log_members(client, experiment_id, run_id, outputs,
                                {k: scrub(v, secrets) for k, v in tags.items()})
    result = {"run_id": run_id, "experiment_id": experiment_id, "tags": tags,
              "member_runs": children,
              "tracking_uri": redact(client.tracking_uri)}
    tracked = Tracked(Path(out_dir))
    tracked.folder.mkdir(parents=True, exist_ok=True)
    tracked.path.write_text(json.dumps(result, indent=1))
    return result


def _metric_series(outputs: StepOutputs, now: int) -> list:
    """The steps' final figures (the (fold, seed) models' learning curves are in their
    nested runs)."""
    from mlflow.entities import Metric

    report, checks = outputs.ingested.report(), outputs.validated.report()
    metrics = outputs.evaluation.metrics()
    values = {"ingest/label_blocks": report["n_label_blocks"],
              "ingest/labelled": report["n_labelled"],
              "ingest/problems": report["problem_count"],
              **{f"validate/{k}": v for k, v in checks["counts"].items()
                 if isinstance(v, (int, float))},
              "evaluate/wa": metrics["wa"], "evaluate/ua": metrics["ua"],
              "evaluate/wa_std": metrics["wa_std"], "evaluate/ua_std": metrics["ua_std"],
              "evaluate/n_test": metrics["n_test"], "evaluate/models": len(metrics["folds"]),
              **{f"evaluate/recall_{c}": v["recall"] for c, v in metrics["per_class"].items()},
              **{f"evaluate/{k}": v for k, v in metrics.get("ablation", {}).items()},
              **{f"evaluate/attention_{k}": v
                 for k, v in metrics.get("attention_alignment", {}).items()
                 if k in ("mass_in_own_word", "uniform_mass", "lift", "prior_lift",
                          "lift_over_prior")},
              **{f"evaluate/{name}_{k}": s[k] for name, s in metrics.get("per_subset",
                                                                         {}).items()
                 for k in ("ua", "wa")},
              **({"evaluate/asr_wer": metrics["asr_wer"]}
                 if metrics.get("asr_wer") is not None else {})}
    return [Metric(key, float(value), now, 0) for key, value in values.items()]


def _log_members(client, experiment_id: str, parent_id: str, outputs: StepOutputs,
                 tags: dict[str, str]) -> dict[str, str]:
    """One nested run per (fold, seed) model: its scores and its learning curves by epoch.
    Returns member name -> run id."""
    from mlflow.entities import Metric, Param
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    trained, now = outputs.trained, int(time.time() * 1000)
    children = {}
    for member in outputs.evaluation.metrics()["folds"]:
        name = member["member"]
        run = client.create_run(experiment_id, run_name=name, tags={
            **tags, MLFLOW_PARENT_RUN_ID: parent_id, "fold": member["fold"],
            "seed": str(member["seed"])})
        series = [Metric(f"evaluate/{k}", float(member[k]), now, 0)
                  for k in ("ua", "wa", "n", "best_epoch")]
        for epoch in trained.history(outputs.model_dir / name):
            # val_ua and val_wa are None when no speaker was held out for validation.
            series += [Metric(f"train/{k}", float(epoch[k]), now, epoch["epoch"])
                       for k in ("loss", "val_ua", "val_wa") if epoch[k] is not None]
        for start in range(0, len(series), LOG_BATCH):
            client.log_batch(run.info.run_id, metrics=series[start:start + LOG_BATCH],
                             params=[] if start else [Param("fold", member["fold"]),
                                                      Param("seed", str(member["seed"]))])
        client.set_terminated(run.info.run_id)
        children[name] = run.info.run_id
    return children


def _artifact_groups(outputs: StepOutputs, config: Config, lineage: Lineage,
                     scratch: Path) -> dict[str, list[Path]]:
    """The files to log, by the artifact folder they go to."""
    config_file, freeze = scratch / Path(CONFIG_ARTIFACT).name, scratch / "pip_freeze.txt"
    config_file.write_text(config.to_yaml())
    freeze.write_text(pip_freeze())
    run_files = [config_file, freeze]
    if Path(lineage.corpus).resolve() == DEFAULT_DATA.resolve() and DVC_POINTER.is_file():
        run_files.append(DVC_POINTER)
    return {
        "run": run_files,
        "ingest": [outputs.ingested.report_path],
        "validate": [p for p in sorted(outputs.validated_dir.iterdir())
                     if p.is_file() and p.suffix != ".parquet"],
        "train": outputs.trained.fold_files(),
        "evaluate": [p for p in sorted(outputs.evaluation_dir.iterdir()) if p.is_file()],
    }


def _log_artifacts(groups: dict[str, list[Path]], model_dir: Path, scratch: Path) -> None:
    """Each group under its own artifact folder, text scrubbed of credentials."""
    import mlflow

    for group, paths in groups.items():
        # Fold files share names; keep them apart by fold.
        by_folder: dict[str, list[Path]] = {}
        for p in paths:
            sub = p.parent.name if group == "train" and p.parent != model_dir else ""
            by_folder.setdefault(sub, []).append(p)
        for sub, files in by_folder.items():
            copied = scrubbed_copy(files, scratch / "copy" / group / (sub or "_"))
            mlflow.log_artifacts(str(copied), f"{group}/{sub}".rstrip("/"))


def _log_dataset(outputs: StepOutputs, lineage: Lineage) -> None:
    """The kept manifest as the run's training input, digested by the data hash."""
    import mlflow
    import pandas as pd

    kept = pd.read_parquet(outputs.validated.manifest_path)
    columns = [c for c in ("utt_id", "session", "speaker", "label", "duration_s",
                           "transcript") if c in kept.columns]
    dataset = mlflow.data.from_pandas(kept[columns], source=lineage.corpus,
                                      name="iemocap", targets="label",
                                      digest=lineage.data_hash[:36])
    mlflow.log_input(dataset, context="training")
