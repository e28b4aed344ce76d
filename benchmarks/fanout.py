"""Folds × seeds fanned out: the pipeline through kfp.local with the (fold, seed) tasks two at
a time (one thread each) against the same pipeline with them one after the other (every
core each), on the same corpus and config, in the same run.

    .venv/bin/python benchmarks/fanout.py [--corpus DIR] [--set key=value ...]

Defaults: the sample corpus (data/), leave-one-session-out × seeds 0 and 1 (10 tasks), the
default model. Both runs build their features afresh and track into scratch MLflow stores.
Prints each wall time, the ratio, and whether the summaries agree: the same (fold, seed)
results, UA and WA. The thread count per task differs between the two (1 against 2), and
float sums in other orders may move a weight in its last bits; the benchmark says whether
any metric moved.
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
from pipelines.local import run_pipeline  # noqa: E402

DEFAULTS = ["protocol=loso", "train.seeds=0,1"]


def through_kfp(corpus: Path, config, work: Path, parallelism: int) -> tuple[float, dict]:
    started = time.perf_counter()
    run = run_pipeline({"corpus": str(corpus.resolve()), "config_yaml": config.to_yaml(),
                        "data_hash": lineage.corpus_hash(corpus),
                        "git_sha": lineage.code_version()[0], "force": True}, work,
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
    with tempfile.TemporaryDirectory() as scratch:
        for name, parallelism in (("sequential", 1), ("fanned out", 2)):
            os.environ["MLFLOW_TRACKING_URI"] = \
                f"sqlite:///{Path(scratch) / name.replace(' ', '_') / 'mlflow.db'}"
            times[name], metrics[name] = through_kfp(
                corpus, config, Path(scratch) / name.replace(" ", "_"), parallelism)
            m = metrics[name]
            print(f"{name:<11} {times[name]:7.1f} s  {len(m['results'])} tasks, "
                  f"{parallelism} at a time  UA {m['ua']:.4f} ± {m['ua_std']:.4f}  "
                  f"WA {m['wa']:.4f} ± {m['wa_std']:.4f}", flush=True)
    a, b = metrics["sequential"], metrics["fanned out"]
    moved = [(r["fold"], r["seed"]) for r, s in zip(a["results"], b["results"]) if r != s]
    print(f"fanned out / sequential wall time: "
          f"{times['fanned out'] / times['sequential']:.2f}x; summaries "
          + ("identical (every task's UA, WA and n)" if not moved and a["ua"] == b["ua"]
             and a["confusion"] == b["confusion"] else f"DIFFER in {moved}"))


if __name__ == "__main__":
    main()
