"""KFP components: thin adapters from typed artifacts to `components.<step>.run`.

Each function body runs inside the component's own process (the local runner's subprocess
or the cluster pod), so it imports what it needs itself. The same definition runs in both
places because the base image is the project's image and KFP is not reinstalled into it.
"""

import os
from typing import List, NamedTuple

from kfp import dsl
from kfp.dsl import (HTML, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model,
                     Output)

PROJECT_VERSION = "0.1.0"
# The image the infra/ Dockerfile builds; override for a registry of your own.
IMAGE = os.environ.get("EMOALIGN_IMAGE", f"emoalign:{PROJECT_VERSION}")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def fetch(corpus: str, dvc_repo: str, dvc_rev: str, data_hash: str, git_sha: str,
          git_dirty: bool, config_yaml: str, protocol: str, seed: int,
          champion_reference: str = ""
          ) -> NamedTuple("Fetched", corpus=str, data_hash=str, git_sha=str, git_dirty=bool,
                          config_yaml=str, data_config_yaml=str, drift_reference=str):
    """The run's inputs and their lineage: the corpus folder (a path, or pulled through DVC
    at a revision) and its hash, the code's commit (when the submitter did not know it: the
    one baked into this image), the config with the run's protocol and seed applied
    (empty / -1: as it says), the part of it the data steps use (their cache key), and what
    validation compares the data with (validate.drift_reference, the champion resolved to
    its version now: a validate task's inputs name the champion it compared with; resolved
    here unless the submitter gives it as `champion_reference`, as `emoalign run` does, which
    holds a connection to the store already: resolving it here costs MLflow's import)."""
    from collections import namedtuple

    from components import fetch as step
    from components import lineage
    from components.config import config_from_yaml

    overrides = ([f"protocol={protocol}"] if protocol else []) + \
        ([f"seed={seed}"] if seed >= 0 else [])
    config = config_from_yaml(config_yaml, overrides)
    folder, digest = step.run(corpus, dvc_repo, dvc_rev, data_hash)
    if not git_sha:
        git_sha, git_dirty = lineage.code_version()
    drift_reference = config.validate.drift_reference
    if drift_reference == "champion" and champion_reference:
        drift_reference = champion_reference
    elif drift_reference == "champion":
        from components import registry

        drift_reference = registry.champion_reference(config.registry.model_name)
    return namedtuple("Fetched", "corpus data_hash git_sha git_dirty config_yaml "
                      "data_config_yaml drift_reference")(
        folder, digest, git_sha, git_dirty, config.to_yaml(),
        config.for_data_steps().to_yaml(), drift_reference)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def check(config_yaml: str, corpus: str, data_hash: str, git_sha: str, git_dirty: bool,
          force: bool, decision: Output[Markdown]) -> bool:
    """Whether to train (the pipeline's condition): not when the champion was trained from
    this data, model code (hashed as this image holds it) and model settings. Why, in
    `decision` (its text, and its metadata `reason`)."""
    from pathlib import Path

    from components import check as step
    from components.config import config_from_yaml
    from components.lineage import Lineage

    decided = step.run(config_from_yaml(config_yaml),
                       Lineage(corpus, data_hash, git_sha, git_dirty), force)
    print(decided.reason)
    decision.metadata["reason"] = decided.reason
    Path(decision.path).write_text(decided.markdown())
    return decided.retrain


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ingest(
    corpus: str,
    config_yaml: str,
    data_hash: str,
    manifest: Output[Dataset],
    counts: Output[Metrics],
    summary: Output[Markdown],
):
    """IEMOCAP release -> manifest (a folder: manifest.parquet + ingest_report.json)."""
    from pathlib import Path

    from components import ingest as step
    from components.config import config_from_yaml

    config = config_from_yaml(config_yaml)
    result = step.run(Path(corpus), Path(manifest.path), config.ingest)
    report = result.report
    manifest.metadata.update(data_hash=data_hash, rows=report["n_label_blocks"],
                             labelled=report["n_labelled"])
    counts.log_metric("label_blocks", report["n_label_blocks"])
    counts.log_metric("labelled", report["n_labelled"])
    counts.log_metric("problems", report["problem_count"])
    for label, n in report["counts"]["label"].items():
        counts.log_metric(f"label_{label}", n)
    lines = step.summary_lines(report)
    Path(summary.path).write_text("# Ingest\n\n```\n" + "\n".join(lines) + "\n```\n")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def validate(
    manifest: Input[Dataset],
    config_yaml: str,
    drift_reference: str,
    validated: Output[Dataset],
    report: Output[HTML],
    checks: Output[Metrics],
):
    """Great Expectations + audio checks -> kept manifest, quarantine, reports, stats; drift
    against `drift_reference` (a registered version, a stats.json, or why none)."""
    import shutil
    import tempfile
    from pathlib import Path

    from components import validate as step
    from components.config import config_from_yaml
    from components.outputs import Validated

    config = config_from_yaml(config_yaml)
    out = Path(validated.path)
    scratch = tempfile.mkdtemp()
    if drift_reference.startswith("models:/"):
        from components import registry

        reference = step.DriftReference(*registry.version_stats(drift_reference,
                                                                Path(scratch)))
    else:  # none, a stats.json path, or why there is no drift check (DriftReference.named)
        reference = step.DriftReference.named(drift_reference)
    try:
        result = step.run(Path(manifest.path), out, config.ingest.classes, config.validate,
                          reference)
    finally:
        # The report matters most when the gate stops the run.
        if (out / Validated.HTML).is_file():
            shutil.copy(out / Validated.HTML, report.path)
    for key, value in result.report["counts"].items():
        checks.log_metric(key, value)
    validated.metadata.update(rows=len(result.manifest), quarantined=len(result.quarantine))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def features(
    validated: Input[Dataset],
    config_yaml: str,
    data_hash: str,
    store: Output[Dataset],
    summary: Output[Metrics],
):
    """Kept manifest -> MFCC feature store (reused from the cache when inputs are unchanged)."""
    from pathlib import Path

    from components import features as step
    from components.config import config_from_yaml

    config = config_from_yaml(config_yaml)
    result = step.run(Path(validated.path), Path(store.path), config.features)
    print(result.message)
    store.metadata.update(data_hash=data_hash, reused=result.reused,
                          utterances=result.n_utterances, frames=result.n_frames,
                          cache_entry=str(result.store_dir))
    summary.log_metric("utterances", result.n_utterances)
    summary.log_metric("frames", result.n_frames)
    summary.log_metric("reused", int(result.reused))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def plan(validated: Input[Dataset], config_yaml: str, tasks_per_machine: int) -> list:
    """The (fold, seed) tasks to fan out, every fold checked first. Each carries the config
    it trains with (its seed alone) and how many tasks share its machine's cores (1 on a
    cluster, where each is its own pod)."""
    from pathlib import Path

    from components import folds
    from components.config import config_from_yaml

    config = config_from_yaml(config_yaml)
    tasks = folds.plan_items(Path(validated.path), config)
    concurrent = max(1, min(len(tasks), tasks_per_machine))
    print(f"{len(tasks)} (fold, seed) tasks, {concurrent} sharing a machine's cores")
    return [{**task, "config_yaml": config.for_task(task["seed"]).to_yaml(),
             "concurrent": concurrent} for task in tasks]


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train(
    store: Input[Dataset],
    validated: Input[Dataset],
    config_yaml: str,
    fold: str,
    concurrent: int,
    model: Output[Model],
):
    """One (fold, seed) model, the seed being the task config's (GPU when the node has one)."""
    from pathlib import Path

    from components import folds, member
    from components import train as step
    from components.config import config_from_yaml

    config = config_from_yaml(config_yaml)
    features, rows = step.load_inputs(Path(store.path), Path(validated.path), config)
    task = folds.task_of(rows, config, fold)  # the plan's task: its split, checked there
    # Evaluated by the evaluate task: on a cluster, the GPU node is not held for it.
    result = member.run_member(task, features, rows, config, Path(model.path),
                               concurrent=concurrent)
    model.metadata.update(fold=fold, seed=config.seed, kind=config.model.kind,
                          device=result["device"], seconds=result["seconds"],
                          best_epoch=result["best_epoch"])


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(
    model: Input[Model],
    store: Input[Dataset],
    validated: Input[Dataset],
    config_yaml: str,
    concurrent: int,
    evaluation: Output[Dataset],
    scores: Output[Metrics],
    confusion: Output[ClassificationMetrics],
):
    """One (fold, seed) model on its held-out session: WA, UA, predictions, and its confusion
    matrix as the KFP UI draws one."""
    from pathlib import Path

    import torch

    from components import environment
    from components import evaluate as step
    from components.config import config_from_yaml

    config = config_from_yaml(config_yaml)
    if threads := environment.task_threads(config.train.threads, concurrent):
        torch.set_num_threads(threads)
    metrics = step.run(Path(model.path), Path(store.path), Path(validated.path),
                       Path(evaluation.path), config)
    for key in ("wa", "ua", "n_test"):
        scores.log_metric(key, metrics[key])
    confusion.log_confusion_matrix(metrics["classes"], metrics["confusion"])


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def summarize(
    models: Input[List[Model]],
    evaluations: Input[List[Dataset]],
    config_yaml: str,
    model: Output[Model],
    evaluation: Output[Dataset],
    scores: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    report: Output[Markdown],
    plots: Output[HTML],
) -> bool:
    """Every (fold, seed) task gathered: one model folder (what registration serves) and one
    evaluation, mean ± std over folds and seeds, its plots on one page. True when UA reaches
    registry.ua_floor (the register step runs only then); the model's metadata
    `ua_floor_check` says so, or why not."""
    from pathlib import Path

    from components import reporting
    from components.config import config_from_yaml
    from components.outputs import Evaluation

    config = config_from_yaml(config_yaml)
    summary = reporting.collect_models([Path(m.path) for m in models], Path(model.path), config)
    metrics = reporting.collect([Path(e.path) for e in evaluations], Path(model.path),
                               Path(evaluation.path), config)
    model.metadata.update(kind=summary["model_kind"], protocol=summary["protocol"],
                          members=len(summary["folds"]), seeds=summary["seeds"])
    for key in ("wa", "ua", "wa_std", "ua_std"):
        scores.log_metric(key, metrics[key])
    confusion.log_confusion_matrix(metrics["classes"], metrics["confusion"])
    Path(report.path).write_text("# Evaluation\n\n```\n"
                                 + "\n".join(reporting.report_lines(metrics)) + "\n```\n")
    Path(plots.path).write_text(reporting.html_page(Evaluation(Path(evaluation.path))))
    floor, passed = config.registry.ua_floor, metrics["ua"] >= config.registry.ua_floor
    model.metadata["ua_floor_check"] = (f"UA {metrics['ua']:.4f} "
                                        f"{'reaches' if passed else 'is below'} "
                                        f"registry.ua_floor {floor}")
    return passed


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def track(
    manifest: Input[Dataset],
    validated: Input[Dataset],
    model: Input[Model],
    evaluation: Input[Dataset],
    config_yaml: str,
    corpus: str,
    data_hash: str,
    git_sha: str,
    git_dirty: bool,
    pipeline_run: str,
    run: Output[Dataset],
) -> str:
    """One MLflow run for the pipeline run: config, metrics, reports, lineage. Returns its id."""
    from pathlib import Path

    from components import registry
    from components.config import config_from_yaml
    from components.lineage import Lineage
    from components.outputs import StepOutputs

    outputs = StepOutputs(Path(manifest.path), Path(validated.path), Path(model.path),
                          Path(evaluation.path))
    result = registry.track(outputs, config_from_yaml(config_yaml),
                            Lineage(corpus, data_hash, git_sha, git_dirty, pipeline_run),
                            Path(run.path))
    run.metadata.update(run_id=result["run_id"], tracking_uri=result["tracking_uri"])
    return result["run_id"]


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register(
    manifest: Input[Dataset],
    validated: Input[Dataset],
    model: Input[Model],
    evaluation: Input[Dataset],
    config_yaml: str,
    run_id: str,
    registration: Output[Dataset],
    decision: Output[Markdown],
    card: Output[Markdown],
):
    """New registered version (alias challenger); the gate moves champion if it passes.
    `card` is the version's model card (also its description and an artifact of its run)."""
    import shutil
    from pathlib import Path

    from components import registry
    from components.config import config_from_yaml
    from components.outputs import StepOutputs
    from components.registry.card import CARD_FILE

    outputs = StepOutputs(Path(manifest.path), Path(validated.path), Path(model.path),
                          Path(evaluation.path))
    result = registry.register(outputs, config_from_yaml(config_yaml), run_id,
                               Path(registration.path))
    registration.metadata.update(model_name=result["model_name"],
                                 model_version=result["model_version"],
                                 promoted=result["promoted"])
    Path(decision.path).write_text(
        f"# {result['model_name']} version {result['model_version']}\n\n"
        f"{'Promoted to champion' if result['promoted'] else 'Not promoted'}: "
        f"{result['reason']}\n")
    shutil.copyfile(Path(registration.path) / CARD_FILE, card.path)
    card.metadata.update(model_card=result["model_card"], model_version=result["model_version"])


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def notify(status: dsl.PipelineTaskFinalStatus, config_yaml: str, pipeline_run: str,
           send: bool):
    """The exit task (dsl.ExitHandler): one POST to notify.webhook however the run ended
    (nothing when it is empty). It sees the run's final status alone (state, the job's
    resource name, the error message), and reads the rest from MLflow: the run tracked
    under this pipeline run, and the version registered from it. `send` is False under
    kfp.local, whose final status names no failed task: the local runner sends the same
    payload itself, with the failed task and its reason (pipelines/local.py)."""
    from components import notify as step
    from components.config import config_from_yaml

    if not send:
        print("the local runner sends the notification (if notify.webhook is set)")
        return
    try:  # an exit task that fails would fail a run that succeeded
        config = config_from_yaml(config_yaml)
    except Exception as e:
        print(f"no notification: the config does not load ({e})")
        return
    url = step.webhook_url(config.notify.webhook)
    if not url:
        print("no webhook (notify.webhook, or EMOALIGN_WEBHOOK_URL where the config says it "
              "comes from the environment): nothing to send")
        return
    from components import registry
    from components.registry.store import secret_values

    try:  # what the store knows; the notification goes out whatever it answers
        client = registry.connect(timeout_s=step.TIMEOUT_S, consequence="sent without it")
        outcome = step.recorded_outcome(client, config.registry.experiment,
                                        config.registry.model_name, pipeline_run)
    except Exception as e:
        print("no results from MLflow: "
              + step.redacted(registry.scrub(" ".join(str(e).split())))[:300])
        outcome = {}
    reason = status.error_message if status.state != "SUCCEEDED" else None
    body = step.payload(pipeline_run, status.state, **outcome,
                        model_name=config.registry.model_name, reason=reason or None,
                        pipeline_job=status.pipeline_job_resource_name,
                        reported_by="exit_task", secrets=secret_values())
    if step.send(url, body):
        print(f"notified {step.where(url)}: run {status.state.lower()}")
