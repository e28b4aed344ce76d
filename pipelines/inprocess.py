"""The pipeline's steps called one after the other in this process, without KFP: what
`emoalign audit` re-runs to reproduce a model, and the baseline the orchestration benchmark
measures kfp.local against. Same `run(...)` functions, same order, same outputs."""

import json
import time
from pathlib import Path

from components import evaluate, features, ingest, train, validate
from components.config import Config

STEPS = ("ingest", "validate", "features", "train", "evaluate")


def run_steps(corpus: Path, config: Config, out_dir: Path) -> dict:
    """Run ingest .. evaluate into out_dir/<step>; returns metrics, paths and step seconds."""
    out_dir = Path(out_dir)
    seconds = {}
    started = time.perf_counter()
    ingest.run(Path(corpus), out_dir / "ingest", config.ingest)
    seconds["ingest"] = time.perf_counter() - started
    mark = time.perf_counter()
    validate.run(out_dir / "ingest", out_dir / "validate", config.ingest.classes,
                 config.validate)
    seconds["validate"] = time.perf_counter() - mark
    mark = time.perf_counter()
    features.run(out_dir / "validate", out_dir / "features", config.features)
    seconds["features"] = time.perf_counter() - mark
    mark = time.perf_counter()
    train.run(out_dir / "features", out_dir / "validate", out_dir / "train", config)
    seconds["train"] = time.perf_counter() - mark
    mark = time.perf_counter()
    metrics = evaluate.run(out_dir / "train", out_dir / "features", out_dir / "validate",
                           out_dir / "evaluate", config)
    seconds["evaluate"] = time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - started
    summary = {"metrics": metrics, "seconds": seconds,
               "manifest": str(out_dir / "ingest" / ingest.MANIFEST_FILENAME),
               "models": str(out_dir / "train")}
    (out_dir / "steps.json").write_text(json.dumps(summary, indent=1))
    return summary
