"""The pipeline's steps called one after the other in this process, without KFP: what
`emoalign audit` re-runs to reproduce a model, and the baseline the orchestration benchmark
measures kfp.local against. The same steps in the same order as the DAG (steps.py), the
same outputs; the (fold, seed) members run one by one (member.run_member), each into
tasks/<member>/, then are collected as `summarize` collects them."""

import json
import time
from pathlib import Path

from components import features, folds, ingest, reporting, train, validate
from components.config import Config
from components.member import run_member
from components.outputs import StepOutputs
from pipelines.steps import DATA_STEPS

# Each data step's call: what it reads, where it writes, the config. No drift reference:
# a re-run reproduces the model, and drift is the registry's business.
DATA_STEP_CALLS = {
    "ingest": lambda source, out, config: ingest.run(source, out, config.ingest),
    "validate": lambda source, out, config: validate.run(source, out, config.ingest.classes,
                                                          config.validate),
    "features": lambda source, out, config: features.run(source, out, config.features),
}


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

    made = {"corpus": Path(corpus)}
    for step in DATA_STEPS:
        made[step.writes] = out_dir / step.name
        DATA_STEP_CALLS[step.name](made[step.reads], made[step.writes], config)
        lap(step.name)
    members = []
    store, rows = train.load_inputs(out.store_dir, out.validated_dir, config)
    for task in folds.plan(rows, config):
        member = out_dir / "tasks" / task.member
        members.append(member)
        run_member(task, store, rows, config, member / "train", member / "evaluate")
        lap("members")
    reporting.collect_models([m / "train" for m in members], out.model_dir, config)
    metrics = reporting.collect([m / "evaluate" for m in members], out.model_dir,
                               out.evaluation_dir, config)
    lap("summarize")
    seconds["total"] = time.perf_counter() - started
    summary = {"metrics": metrics, "seconds": seconds,
               "manifest": str(out.ingested.manifest_path), "models": str(out.model_dir)}
    (out_dir / "steps.json").write_text(json.dumps(summary, indent=1))
    return summary
