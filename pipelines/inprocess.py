"""The pipeline's steps called one after the other in this process, without KFP: what
`emoalign audit` re-runs to reproduce a model, and the baseline the orchestration benchmark
measures kfp.local against. Same `run(...)` functions, same order, same outputs."""

import json
import time
from pathlib import Path

from components import evaluate, features, ingest, train, validate
from components.config import Config
from components.outputs import StepOutputs


def run_steps(corpus: Path, config: Config, out_dir: Path) -> dict:
    """Run ingest .. evaluate into out_dir/<step>; returns metrics, paths and step seconds."""
    out_dir = Path(out_dir)
    out = StepOutputs.of_steps_dir(out_dir)
    seconds = {}
    started = time.perf_counter()
    ingest.run(Path(corpus), out.manifest_dir, config.ingest)
    seconds["ingest"] = time.perf_counter() - started
    mark = time.perf_counter()
    validate.run(out.manifest_dir, out.validated_dir, config.ingest.classes, config.validate)
    seconds["validate"] = time.perf_counter() - mark
    mark = time.perf_counter()
    features.run(out.validated_dir, out.store_dir, config.features)
    seconds["features"] = time.perf_counter() - mark
    mark = time.perf_counter()
    train.run(out.store_dir, out.validated_dir, out.model_dir, config)
    seconds["train"] = time.perf_counter() - mark
    mark = time.perf_counter()
    metrics = evaluate.run(out.model_dir, out.store_dir, out.validated_dir, out.evaluation_dir,
                           config)
    seconds["evaluate"] = time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - started
    summary = {"metrics": metrics, "seconds": seconds,
               "manifest": str(out.ingested.manifest_path), "models": str(out.model_dir)}
    (out_dir / "steps.json").write_text(json.dumps(summary, indent=1))
    return summary
