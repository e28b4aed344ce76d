"""Run the emoalign DAG with Kubeflow's own local runner (kfp.local, no cluster, no Docker),
and read what a finished run left behind.

kfp.local prints every task's full executor log to stdout. We keep all of it in the run's
`pipeline.log` and show the user only the task status lines, plus a one-line reason and
the log's path when a task fails.

What a run did is read from what its tasks declared: each task's executor_output.json (its
parameters, and its artifacts' URIs and metadata), and, when a task fails, the task chain
kfp.local's exception names. The log is read for one thing alone: the failed task's
exception line, which kfp.local passes on to nothing else.

The end of a run, succeeded or failed, is posted to notify.webhook from here
(`notify_run`), once: kfp.local runs the DAG's exit task, but the final status it gives it
names no failed task, so the exit task is built not to send locally.

`emoalign retrain` asks the check task's question (components/check.py) in this process
before starting kfp.local: when the champion was trained from this data, code and config,
the pipeline is not started at all (`NotStarted`); the summary and the notification are
the ones a pipeline stopped by its check task gives.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from components import check, environment
from components.config import Config, config_from_yaml
from components.errors import UserError
from components.lineage import DEFAULT_DATA, Lineage, code_identity
from components.outputs import STEP_OUTPUTS, StepOutputs
from pipelines import PIPELINE_NAME
from pipelines.arguments import pipeline_arguments
from pipelines.task_processes import forked_tasks, warm_up_task_processes

RESOLVED_CONFIG = "config.resolved.yaml"  # beside the run's task folders

ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
STATUS_RE = re.compile(r"(Running pipeline|Executing task|finished with status|Retrying in)")
EXCEPTION_RE = re.compile(r"^\s*(?:[\w]+\.)*(\w*(?:Error|Exception)): (.+)$")
# kfp.local's RuntimeError when a task fails: "... Inner task failed: 'train' inside
# 'for-loop-2-iteration-1' inside 'condition-1'." (innermost first; ANSI colours removed).
INNER_FAILURE_RE = re.compile(r"Inner task failed: (.+)\.\s*$")
ITERATION_SEP = "-iteration-"  # kfp.local's ParallelFor iteration tasks: <loop>-iteration-<i>


class PipelineFailed(UserError):
    """A task failed; the message names the task, the reason and the log."""

    def __init__(self, message: str, failed_task: str | None = None,
                 reason: str | None = None, pipeline_run: str | None = None):
        super().__init__(message)
        self.failed_task, self.reason, self.pipeline_run = failed_task, reason, pipeline_run


@dataclass
class LocalRun:
    run_dir: Path   # <pipeline_root>/<pipeline>-<timestamp>
    log_path: Path
    seconds: float

    def task_dir(self, task: str) -> Path:
        return self.run_dir / task

    @property
    def outputs(self) -> StepOutputs:
        """Where the steps' outputs are, as their tasks declared them (the artifacts' URIs);
        a task that did not run (register, below the floor) keeps the folder kfp.local would
        have given it."""
        declared = {field: uri for field, (task, reader) in STEP_OUTPUTS.items()
                    if (uri := self.artifact_uri(task, reader.KFP_OUTPUT)) is not None}
        return dataclasses.replace(StepOutputs.of_pipeline_run(self.run_dir), **declared)

    def decision(self) -> tuple[bool, str]:
        """The check task's answer: whether the run trains, and why (or why not)."""
        return self.parameter("check"), self.artifact_metadata("check", "decision")["reason"]

    def _executor_output(self, task: str) -> dict:
        """What KFP recorded of a finished task's outputs: its parameters, and its artifacts'
        URIs and metadata (a task that failed or did not run has none)."""
        return json.loads((self.task_dir(task) / "executor_output.json").read_text())

    def parameter(self, task: str, name: str = "Output"):
        """A task's output parameter: `Output` is its return value (check's and summarize's
        gates are bools)."""
        return self._executor_output(task)["parameterValues"][name]

    def _artifact(self, task: str, name: str) -> dict:
        return self._executor_output(task)["artifacts"][name]["artifacts"][0]

    def artifact_metadata(self, task: str, name: str) -> dict:
        return self._artifact(task, name)["metadata"]

    def artifact_uri(self, task: str, name: str) -> Path | None:
        """Where a task wrote an output artifact (kfp.local's URIs are local paths); None when
        the task declared none (it failed or did not run)."""
        try:
            return Path(self._artifact(task, name)["uri"])
        except (OSError, KeyError, IndexError):
            return None


@dataclass
class NotStarted(LocalRun):
    """A retrain with nothing to retrain, answered before kfp.local was started (the check
    step's question, asked in this process): no task ran. Its folder, named as kfp.local
    names a run's, keeps what the check task's would: the decision (check/decision), the
    resolved config, and a log saying why the pipeline did not start."""
    reason: str = ""

    def decision(self) -> tuple[bool, str]:
        return False, self.reason


class _StatusTee(io.TextIOBase):
    """Everything to the log file; status lines also to the terminal."""

    def __init__(self, log, terminal, echo: bool):
        self.log, self.terminal, self.echo = log, terminal, echo
        self.pending = ""

    def write(self, text: str) -> int:
        self.log.write(ANSI_RE.sub("", text))
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            plain = ANSI_RE.sub("", line)
            if self.echo and STATUS_RE.search(plain) and not plain.startswith(" "):
                self.terminal.write("  " + plain.strip() + "\n")
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        self.terminal.flush()


@contextmanager
def _captured(log_path: Path, echo: bool):
    with open(log_path, "w") as log:
        stdout = sys.stdout
        sys.stdout = _StatusTee(log, stdout, echo)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stdout = stdout


def _failed_chain(error: Exception) -> list[str]:
    """The failed task and the tasks around it, innermost first, as kfp.local's exception
    names them: ['train', 'for-loop-2-iteration-1', 'condition-1']."""
    m = INNER_FAILURE_RE.search(ANSI_RE.sub("", str(error)))
    return re.findall(r"'([^']+)'", m.group(1)) if m else []


def _failure_reason(error: Exception, log_text: str, run: LocalRun) -> tuple[str, str]:
    """(which task failed, its last exception line); a fanned-out task is named with its
    fold and seed."""
    chain = _failed_chain(error)
    task = f"task '{chain[0] if chain else '?'}'"
    iteration = next((name for name in chain if ITERATION_SEP in name), None)
    if chain and iteration is not None:
        try:
            items = run.parameter("plan")  # the ParallelFor's items, in iteration order
            item = items[int(iteration.rsplit(ITERATION_SEP, 1)[1])]
        except (OSError, KeyError, ValueError, IndexError):
            item = None
        if item is not None:
            others = len(_unfinished_iterations(run, iteration) - {iteration})
            task = (f"task '{chain[0]}' of fold {item['fold']} seed {int(item['seed'])}"
                    + (f" (and {others} other (fold, seed) task{'s' * (others > 1)})"
                       if others else ""))
    # The one thing read from the log: kfp.local runs a task as a subprocess whose output it
    # prints and whose exit code alone it keeps, so the task's exception (its type and
    # message) is in the log and nowhere else.
    reason = "see the log"
    for line in log_text.splitlines():
        m = EXCEPTION_RE.match(line)
        if m:
            reason = f"{m.group(1)}: {m.group(2).strip()}"
    return task, reason


def _unfinished_iterations(run: LocalRun, failed: str) -> set[str]:
    """The iterations of the failed one's ParallelFor holding a task that started and
    declared no outputs. kfp.local's exception names only the first iteration to fail (it
    stops collecting there, letting the others finish), so the rest are found by what their
    tasks declared: every iteration task is a folder <loop>-iteration-<i>/<task>/, and a
    finished task has its executor_output.json."""
    loop = failed.rsplit(ITERATION_SEP, 1)[0]
    return {folder.name for folder in run.run_dir.glob(f"{loop}{ITERATION_SEP}*")
            if any(task.is_dir() and not (task / "executor_output.json").is_file()
                   for task in folder.iterdir())}


def run_pipeline(arguments: dict, pipeline_root: Path, echo: bool = True,
                 parallelism: int = 0) -> LocalRun:
    """Execute the pipeline in this Python environment, at most `parallelism` (fold, seed)
    tasks at once, sharing this machine's cores (0: as many as kfp.local runs); return
    where its outputs are."""
    from kfp import local

    from pipelines.pipeline import build_pipeline

    pipeline_root = Path(pipeline_root).resolve()
    pipeline_root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root),
               raise_on_error=True)
    before = set(pipeline_root.iterdir())
    log_path = pipeline_root / f".{PIPELINE_NAME}-{time.time_ns()}.log"
    started = time.perf_counter()
    error = None
    # The task processes kfp.local starts inherit this process's environment, the allocator
    # settings for training with it (environment.TRAINING_TUNABLES).
    # Each task forked from an interpreter with its libraries imported (task_processes).
    with _captured(log_path, echo), warnings.catch_warnings(), \
            environment.training_allocator_for_subprocesses(), forked_tasks():
        # The project image is the base image on purpose: locally it *is* this environment.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        # Resources, GPU, secrets, volumes are for the cluster (pipelines/cluster.py).
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner")
        try:
            parallelism = parallelism or min(os.cpu_count() or 1, KFP_LOCAL_MAX_PARALLEL)
            # kfp.local runs the exit task, but its final status names no failed task: the
            # notification is run_local_pipeline's (notify_run).
            build_pipeline(parallelism, tasks_per_machine=parallelism,
                           exit_task_notifies=False)(**arguments)
        except RuntimeError as e:
            error = e
    seconds = time.perf_counter() - started
    # kfp.local returns nothing naming the run's folder: <pipeline>-<timestamp>, the new one.
    new_dirs = sorted(p for p in set(pipeline_root.iterdir()) - before
                      if p.is_dir() and p.name.startswith(PIPELINE_NAME))
    run_dir = new_dirs[-1] if new_dirs else pipeline_root
    final_log = run_dir / "pipeline.log" if new_dirs else log_path
    log_path.replace(final_log)
    run = LocalRun(run_dir=run_dir, log_path=final_log, seconds=seconds)
    if error is not None:
        task, reason = _failure_reason(error, final_log.read_text(), run)
        chain = _failed_chain(error)
        raise PipelineFailed(f"{task} failed: {reason} (log: {final_log})",
                             failed_task=chain[0] if chain else None, reason=reason,
                             pipeline_run=run_dir.name if new_dirs else None)
    return run


# ---- emoalign run ------------------------------------------------------------------------

def ensure_default_corpus(config: Config) -> Path:
    """data/ holds the DVC-tracked sample corpus; regenerate it (same bytes) when absent."""
    from components import iemocap

    release = DEFAULT_DATA / iemocap.RELEASE_DIRNAME
    if not release.exists() or not any(release.iterdir()):
        from corpora import sample_corpus  # scipy.signal: a second to import

        print(f"{release} is empty: generating the default sample corpus "
              f"({config.sample_corpus.utterances} utterances, seed {config.sample_corpus.seed})")
        sample_corpus.generate(release, config.sample_corpus.utterances,
                               config.sample_corpus.seed, workers=sample_corpus.default_workers())
    return DEFAULT_DATA


def checked_corpus(corpus: Path) -> Path:
    """The corpus, or a one-line error when it is not an IEMOCAP release."""
    from components import iemocap

    try:
        iemocap.find_release_root(corpus)
    except (FileNotFoundError, iemocap.FormatError) as e:
        raise UserError(str(e)) from None
    return corpus


# kfp 2.17's local runner runs at most this many ParallelFor iterations at once, whatever
# the DAG allows (ParallelExecutor.conservative_max).
KFP_LOCAL_MAX_PARALLEL = 2


def local_parallelism(config: Config) -> int:
    """(fold, seed) tasks at once on this machine: train.parallelism, else one per core, as
    far as kfp.local goes."""
    return min(config.train.parallelism or os.cpu_count() or 1, KFP_LOCAL_MAX_PARALLEL)


def run_local_pipeline(config: Config, lineage: Lineage, workdir: Path,
                       force: bool = True) -> LocalRun:
    """Run the DAG through kfp.local, tracking into the store MLflow's settings name; tell
    notify.webhook how it ended, succeeded or failed (once)."""
    from components import registry

    try:
        if force:  # its imports overlap what this process does before the first task
            warm_up_task_processes()
        # Before any work: a tracking store that does not answer stops the run here.
        uri = registry.tracking_uri()
        registry.connect(uri, consequence="nothing was trained or registered")
        os.environ["MLFLOW_TRACKING_URI"] = uri  # the task subprocesses inherit it
        print(f"tracking {registry.redact(uri)}")
        started = time.perf_counter()
        # The check task's question, asked here first (this process has MLflow loaded
        # already): "no" needs no pipeline, whose fetch, check and exit tasks would each
        # start a process and import MLflow to give the same answer. "Yes" runs the
        # pipeline, which asks again in its check task, as on a cluster.
        decided = None if force else check.run(config, lineage)
        if decided is not None and not decided.retrain:
            run = record_not_started(decided, config, lineage, workdir / "pipeline_root",
                                     started)
        else:
            if decided is not None:  # what changed since the champion, named
                print(f"retraining: {decided.reason}")
                warm_up_task_processes()
            # The champion for the drift check, resolved here too: fetch would import
            # MLflow in a process of its own to ask.
            champion = (registry.champion_reference(config.registry.model_name)
                        if config.validate.drift_reference == "champion" else "")
            run = run_pipeline(
                pipeline_arguments(config, lineage.corpus, lineage, force=force,
                                   champion_reference=champion),
                workdir / "pipeline_root", parallelism=local_parallelism(config))
        (run.run_dir / RESOLVED_CONFIG).write_text(config.to_yaml())
    except Exception as failure:
        notify_run(config, failure=failure)
        raise
    if config.notify.webhook:  # a URL, or that it comes from the environment
        notify_run(config, summary=run_summary(run, config, lineage))
    return run


def record_not_started(decided: check.Decision, config: Config, lineage: Lineage,
                       pipeline_root: Path, started: float) -> NotStarted:
    """A folder for a retrain that did not start the pipeline, as kfp.local would name its
    run (`pipeline_run` in the summary and the notification): the check's decision at the
    path the check task writes it to, and a log saying how it was reached."""
    now = datetime.now()
    run_dir = Path(pipeline_root).resolve() / f"{PIPELINE_NAME}-{now:%Y-%m-%d-%H-%M-%S-%f}"
    (run_dir / "check").mkdir(parents=True)
    (run_dir / "check" / "decision").write_text(decided.markdown())
    log_path = run_dir / "pipeline.log"
    log_path.write_text(
        f"{now:%Y-%m-%d %H:%M:%S} the pipeline was not started: `emoalign "
        "retrain` asked the check step's question (components/check.py) in its own process\n"
        f"data hash {lineage.data_hash}, code {lineage.git_sha or '?'}"
        f"{' (uncommitted changes)' if lineage.git_dirty else ''} (model code "
        f"{code_identity().sha256[:12]}), config sha256 {config.sha256()}, registered "
        f"model {config.registry.model_name!r}\n"
        f"{decided.reason}\n")
    return NotStarted(run_dir=run_dir, log_path=log_path,
                      seconds=time.perf_counter() - started, reason=decided.reason)


def notify_run(config: Config, summary: dict | None = None,
               failure: Exception | None = None) -> dict | None:
    """POST the run's end to notify.webhook, as the exit task does on a cluster (with the
    failed task and its reason, which kfp.local's final status does not give it): from the
    run summary when it succeeded, from the failure when not. Returns the payload sent (None
    when no webhook is set); an unreachable webhook is one line on stderr, never an error."""
    from components import notify
    from components.registry.store import secret_values

    url = notify.webhook_url(config.notify.webhook)
    if not url:
        return None
    if failure is None:
        summary = summary or {}
        version = summary.get("model_version")
        facts = dict(retrained=summary.get("retrained"),
                     retrain_reason=summary.get("retrain_reason") or summary.get("reason"),
                     ua=summary.get("ua"), wa=summary.get("wa"), model_version=version,
                     mlflow_run_id=summary.get("mlflow_run_id"),
                     gate_decision=(None if version is None else
                                    "promoted" if summary.get("promoted") else "rejected"),
                     gate_reason=(summary.get("promotion_reason") if version is not None
                                  else summary.get("ua_floor_check")),
                     drift_unavailable=summary.get("drift_unavailable"))
        body = notify.payload(summary.get("pipeline_run"), "succeeded", **facts,
                              model_name=config.registry.model_name,
                              reported_by="local_runner", secrets=secret_values())
    else:
        error = " ".join(str(failure).split())
        if not isinstance(failure, UserError):
            error = f"{type(failure).__name__}: {error}"
        body = notify.payload(getattr(failure, "pipeline_run", None), "failed",
                              failed_task=getattr(failure, "failed_task", None),
                              reason=getattr(failure, "reason", None) or error,
                              error=error, model_name=config.registry.model_name,
                              reported_by="local_runner", secrets=secret_values())
    notify.send(url, body)
    return body


def run_report(run: LocalRun, config: Config, lineage: Lineage) -> tuple[dict, list[str]]:
    """(the run summary `--summary-json` writes, the lines `emoalign run` prints after the
    task status lines)."""
    summary = run_summary(run, config, lineage)
    if not summary["retrained"]:
        ended = ("the pipeline was not started" if isinstance(run, NotStarted)
                 else f"finished in {run.seconds:.1f} s")
        return summary, ["", f"{summary['reason']}; {ended}"]
    return summary, _report_lines(run, config, summary)


def run_summary(run: LocalRun, config: Config, lineage: Lineage) -> dict:
    """The run summary `--summary-json` writes (and the notification is made of)."""
    retrain, reason = run.decision()
    if not retrain:
        return {"retrained": False, "reason": reason, "data_hash": lineage.data_hash,
                "git_sha": lineage.git_sha or None, "pipeline_run": run.run_dir.name,
                "run_dir": str(run.run_dir), "model_name": config.registry.model_name}
    out = run.outputs
    metrics, registration, tracked = (out.evaluation.metrics(), out.registered.read(),
                                      out.tracked.read())
    summary = {
        "retrained": True,
        "retrain_reason": reason,
        "wa": metrics["wa"], "ua": metrics["ua"],
        **{k: metrics[k] for k in ("ua_mean", "ua_std", "wa_mean", "wa_std", "results")},
        "per_class_recall": {c: v["recall"] for c, v in metrics["per_class"].items()},
        "confusion": metrics["confusion"], "model_name": config.registry.model_name,
        **_registration_summary(registration),
        "mlflow_run_id": tracked["run_id"], "tracking_uri": tracked["tracking_uri"],
        "data_hash": lineage.data_hash, "git_sha": lineage.git_sha or None,
        "git_dirty": lineage.git_dirty,
        "n_train": sum(f["n_train"] for f in out.trained.summary()["folds"]),
        "n_test": metrics["n_test"], "pipeline_run": run.run_dir.name,
        "run_dir": str(run.run_dir), "config_sha256": config.sha256(), "seed": config.seed,
        **_data_summary(out), "model_kind": metrics["model_kind"],
        "protocol": metrics["protocol"],
        "ua_floor_check": run.artifact_metadata("summarize", "model")["ua_floor_check"],
    }
    return summary


def _registration_summary(registration: dict | None) -> dict:
    return {"model_version": registration["model_version"] if registration else None,
            "promoted": bool(registration and registration["promoted"]),
            "promotion_reason": registration["reason"] if registration else None,
            "champion_version": registration["champion_version"] if registration else None}


def _data_summary(out: StepOutputs) -> dict:
    report, checks = out.ingested.report(), out.validated.report()
    return {"n_label_blocks": report["n_label_blocks"], "n_labelled": report["n_labelled"],
            "label_counts": report["counts"]["label"], "n_kept": checks["counts"]["kept"],
            "n_quarantined": checks["counts"]["quarantined"],
            # Why the drift check against the champion could not be made (None: it was, or
            # none was asked for); the gate does not promote such a run's version.
            "drift_unavailable": checks.get("drift_unavailable")}


def _report_lines(run: LocalRun, config: Config, summary: dict) -> list[str]:
    from components import ingest, reporting, validate

    out = run.outputs
    store = run.artifact_metadata("features", "store")
    lines = ["", *ingest.summary_lines(out.ingested.report()),
             *validate.summary_lines(out.validated.report()),
             f"features: {'reused' if store['reused'] else 'built'} "
             f"{int(store['utterances'])} utterances, {int(store['frames']):,} frames "
             f"({store['cache_entry']})",
             *reporting.report_lines(out.evaluation.metrics()),
             "", f"MLflow run {summary['mlflow_run_id']} in experiment "
                 f"{config.registry.experiment!r}"]
    if summary["model_version"] is not None:
        lines += [f"registered {summary['model_name']} version {summary['model_version']}: "
                  f"{'promoted to champion' if summary['promoted'] else 'not promoted'} "
                  f"({summary['promotion_reason']})",
                  f"champion: version {summary['champion_version']}"]
    else:
        lines.append("not registered: " + summary["ua_floor_check"])
    lines.append(f"pipeline finished in {run.seconds:.1f} s; outputs under {run.run_dir}")
    return lines


def register_finished_run(run_dir: Path, corpus: Path | None) -> dict:
    """Track (when its track step did not) and register what a local run left."""
    from components import lineage, registry

    run_dir = Path(run_dir)
    resolved = run_dir / RESOLVED_CONFIG
    if not resolved.is_file():
        raise UserError(f"{run_dir} is not a finished local pipeline run "
                        "(no config.resolved.yaml)")
    config = config_from_yaml(resolved.read_text())
    # By kfp.local's layout, not the URIs the tasks declared: those are absolute, and this
    # folder may be a copy of the run, or moved since.
    outputs = StepOutputs.of_pipeline_run(run_dir)
    tracked = outputs.tracked.read()
    run_id = tracked["run_id"] if tracked else None
    if run_id is None:
        corpus = Path(corpus or DEFAULT_DATA)
        sha, dirty = lineage.code_version()
        run_id = registry.track(outputs, config, Lineage(
            str(corpus), lineage.data_hash(corpus)[0], sha, dirty, run_dir.name),
            outputs.run_dir)["run_id"]
    return registry.register(outputs, config, run_id, outputs.registration_dir)
