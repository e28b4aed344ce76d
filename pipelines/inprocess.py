"""The pipeline's steps called one after the other in this process, without KFP: what
`emoalign audit` re-runs to reproduce a model, and the baseline the orchestration benchmark
measures kfp.local against. Same `run(...)` functions, same order, same outputs; the
(fold, seed) tasks run one by one, each into tasks/<member>/, then are collected as
`summarize` collects them."""

import json
import time
from pathlib import Path

from components import evaluate, features, folds, ingest, reporting, train, validate
from components.config import Config
from components.outputs import StepOutputs


def run_steps(corpus: Path, config: Config, out_dir: Path) -> dict:
    """Run ingest .. evaluate into out_dir/<step>; returns metrics, paths and step seconds."""
    out_dir = Path(out_dir)
    out = StepOutputs.of_steps_dir(out_dir)
    seconds = {}
    started = mark = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal mark
        seconds[step] = seconds.get(step, 0.0) + time.perf_counter() - mark
        mark = time.perf_counter()

    ingest.run(Path(corpus), out.manifest_dir, config.ingest)
    lap("ingest")
    validate.run(out.manifest_dir, out.validated_dir, config.ingest.classes, config.validate)
    lap("validate")
    features.run(out.validated_dir, out.store_dir, config.features)
    lap("features")
    members = []
    store, rows = train.load_inputs(out.store_dir, out.validated_dir, config)
    for task in folds.plan(rows, config):
        task_config, member = config.for_task(task.seed), out_dir / "tasks" / task.member
        members.append(member)
        result = train.train_member(task, store, rows, task_config, member / "train")
        reporting.write_train_summary([result], member / "train", task_config)
        lap("train")
        evaluate.run(member / "train", out.store_dir, out.validated_dir, member / "evaluate",
                     task_config)
        lap("evaluate")
    reporting.collect_models([m / "train" for m in members], out.model_dir, config)
    metrics = reporting.collect([m / "evaluate" for m in members], out.model_dir,
                               out.evaluation_dir, config)
    lap("summarize")
    seconds["total"] = time.perf_counter() - started
    summary = {"metrics": metrics, "seconds": seconds,
               "manifest": str(out.ingested.manifest_path), "models": str(out.model_dir)}
    (out_dir / "steps.json").write_text(json.dumps(summary, indent=1))
    return summary
