"""Folds × seeds fanned out: the pipeline through kfp.local with the (fold, seed) tasks two at
a time (one thread each) against the same pipeline with them one after the other, on the
same corpus and config, in the same run.

    .venv/bin/python benchmarks/fanout.py [--corpus DIR] [--set key=value ...]

Defaults: the sample corpus (data/), leave-one-session-out × seeds 0 and 1 (10 tasks), the
default model trained for 12 epochs (early stopping never ends a task sooner, so every run
does the same work). Three runs, each building its features afresh and tracking into a
scratch MLflow store:
- sequential: one task at a time on every core (train.threads 0: 2 threads here), what
  a user had before the fan-out: the baseline of the wall-time ratio;
- sequential, 1 thread: one task at a time with the fanned-out tasks' thread count, so the
  arithmetic is the same;
- fanned out: two tasks at a time, one thread each.
Float sums split over 2 threads or 1 differ in their last bits, so the metrics are compared
between the runs with the same thread count: they must be identical.
"""

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components import lineage  # noqa: E402
from components.config import load_config  # noqa: E402
from pipelines import local  # noqa: E402
from pipelines.arguments import pipeline_arguments  # noqa: E402
from pipelines.local import run_pipeline  # noqa: E402

DEFAULTS = ["protocol=loso", "train.seeds=0,1", "train.epochs=12"]


def through_kfp(corpus: Path, config, work: Path, parallelism: int) -> tuple[float, dict]:
    started = time.perf_counter()
    run_lineage = lineage.Lineage(str(corpus.resolve()), lineage.release_hash(corpus),
                                  lineage.code_version()[0], False)
    run = run_pipeline(pipeline_arguments(config, run_lineage.corpus, run_lineage), work,
                       echo=False, parallelism=parallelism)
    return time.perf_counter() - started, run.outputs.evaluation.metrics()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, help="default: data/ (the sample corpus)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    config = load_config(None, DEFAULTS + args.overrides)
    config.features.cache_dir = ""  # both runs extract features themselves
    corpus = args.corpus or local.ensure_default_corpus(config)
    print(f"{config.protocol} × seeds {config.seeds}, model {config.model.kind}, "
          f"{os.cpu_count()} cores", flush=True)
    times, metrics = {}, {}
    runs = (("sequential", 1, 0), ("sequential, 1 thread", 1, 1), ("fanned out", 2, 0))
    with tempfile.TemporaryDirectory() as scratch:
        for name, parallelism, threads in runs:
            folder = Path(scratch) / name.replace(" ", "_").replace(",", "")
            os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
            config.train.threads = threads
            times[name], metrics[name] = through_kfp(corpus, config, folder, parallelism)
            m = metrics[name]
            print(f"{name:<21} {times[name]:7.1f} s  {len(m['results'])} tasks, "
                  f"{parallelism} at a time  UA {m['ua']:.4f} ± {m['ua_std']:.4f}  "
                  f"WA {m['wa']:.4f} ± {m['wa_std']:.4f}", flush=True)
    print(f"fanned out / sequential wall time: "
          f"{times['fanned out'] / times['sequential']:.2f}x "
          f"({times['sequential'] / times['fanned out']:.2f}x faster); "
          f"fanned out / sequential at 1 thread: "
          f"{times['fanned out'] / times['sequential, 1 thread']:.2f}x")
    a, b = metrics["sequential, 1 thread"], metrics["fanned out"]
    moved = [(r["fold"], r["seed"]) for r, s in zip(a["results"], b["results"]) if r != s]
    print("fanned out against sequential at the same thread count: "
          + ("identical summaries (every task's UA, WA and n; the pooled confusion matrix)"
             if not moved and a["ua"] == b["ua"] and a["confusion"] == b["confusion"]
             else f"DIFFER in {moved}"))
    c = metrics["sequential"]
    print(f"(at 2 threads against 1, UA {c['ua']:.4f} against {a['ua']:.4f}: the last bits of "
          "float sums move some predictions)")


if __name__ == "__main__":
    main()
