"""Orchestration overhead: the pipeline through kfp.local against the same steps called one
after the other in one process, on the same corpus and config, in the same run.

    .venv/bin/python benchmarks/orchestration.py [--corpus DIR] [--set key=value ...]

Both paths do the same work: ingest, validate, features (built afresh, no cache), train,
evaluate, then track and register into a scratch MLflow store of their own. The kfp.local
path adds what orchestration costs: a subprocess per task (each importing its libraries),
artifact bookkeeping, and the fetch and check tasks. It prints each path's wall time, the
ratio (goal: 1.25x or less) and checks that both produced the same metrics.
"""

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components import lineage, registry  # noqa: E402
from components.config import load_config  # noqa: E402
from components.lineage import Lineage  # noqa: E402
from components.outputs import StepOutputs  # noqa: E402
from pipelines import local  # noqa: E402
from pipelines.inprocess import run_steps  # noqa: E402
from pipelines.arguments import pipeline_arguments  # noqa: E402
from pipelines.local import run_pipeline  # noqa: E402


def in_process(corpus: Path, config, work: Path, data_hash: str, sha: str) -> tuple[float, dict]:
    started = time.perf_counter()
    # The steps' own output (epochs, MLflow's notices) goes where kfp.local puts it: a log.
    work.mkdir(parents=True)
    with open(work / "steps.log", "w") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        summary = run_steps(corpus, config, work)
        outputs = StepOutputs.of_steps_dir(work)
        tracked = registry.track(outputs, config, Lineage(
            str(corpus), data_hash, sha, False, "in-process"), work / "track")
        registry.register(outputs, config, tracked["run_id"], work / "register")
    return time.perf_counter() - started, summary["metrics"]


def through_kfp(corpus: Path, config, work: Path, data_hash: str, sha: str
                ) -> tuple[float, dict]:
    started = time.perf_counter()
    run = run_pipeline(pipeline_arguments(config, str(corpus.resolve()), Lineage(
        str(corpus.resolve()), data_hash, sha, False)), work, echo=False)
    seconds = time.perf_counter() - started
    metrics = run.outputs.evaluation.metrics()
    return seconds, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, help="default: data/ (the sample corpus)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    config = load_config(None, args.overrides)
    config.features.cache_dir = ""  # both paths extract features themselves
    corpus = args.corpus or local.ensure_default_corpus(config)
    data_hash = lineage.release_hash(corpus)
    sha = lineage.code_version()[0]
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        times = {}
        metrics = {}
        for name, path in (("in-process", in_process), ("kfp.local", through_kfp)):
            os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch / name / 'mlflow.db'}"
            (scratch / name).mkdir()
            times[name], metrics[name] = path(corpus, config, scratch / name / "work",
                                              data_hash, sha)
            print(f"{name:<11} {times[name]:7.1f} s   WA {metrics[name]['wa']:.4f}  "
                  f"UA {metrics[name]['ua']:.4f}", flush=True)
    same = all(metrics["in-process"][k] == metrics["kfp.local"][k]
               for k in ("wa", "ua", "confusion"))
    print(f"kfp.local / in-process: {times['kfp.local'] / times['in-process']:.2f}x "
          f"(overhead {times['kfp.local'] - times['in-process']:.1f} s; goal 1.25x or less); "
          f"metrics {'identical' if same else 'DIFFER'}")


if __name__ == "__main__":
    main()
