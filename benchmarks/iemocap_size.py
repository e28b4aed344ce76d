"""The whole pipeline on an IEMOCAP-size corpus: wall time, time per task, peak memory.

    .venv/bin/python benchmarks/iemocap_size.py [--corpus DIR] [--epochs 3]

Without --corpus it generates one first (10,039 utterances, about 12 hours, as many as
IEMOCAP holds; timed separately). Then `emoalign run` (kfp.local, holdout on session 5, a
few epochs; `--epochs 30` is the default's training) into a scratch MLflow store. Goals on 2
cores: at 30 epochs 4 minutes or less and 3 GB peak RSS or less (issue 36); `--set
protocol=loso --set train.seeds=0,1,2` runs the field's protocol, 15 models. Peak RSS is that of the largest single process of the run (Linux
reports the maximum over all descendants that ended).
"""

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from corpora import sample_corpus  # noqa: E402

TASK_RE = re.compile(r"^(\d\d:\d\d:\d\d\.\d+) - INFO - (Executing task|Task) '(\w+)'")


def task_seconds(log: str) -> dict[str, float]:
    started, seconds = {}, {}
    for line in log.splitlines():
        m = TASK_RE.match(line.strip())
        if not m:
            continue
        t = datetime.strptime(m.group(1), "%H:%M:%S.%f")
        if m.group(2) == "Executing task":
            started[m.group(3)] = t
        elif m.group(3) in started:
            seconds[m.group(3)] = (t - started[m.group(3)]).total_seconds()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, help="a release root (default: generate one)")
    parser.add_argument("--utterances", type=int, default=10_039)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        corpus = args.corpus
        if corpus is None:
            corpus = scratch / "IEMOCAP_full_release"
            started = time.perf_counter()
            sample_corpus.generate(corpus, args.utterances, seed=0,
                                   workers=os.cpu_count() or 1)
            print(f"generated {args.utterances} utterances in "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
        overrides = [f"train.epochs={args.epochs}", *args.overrides]
        command = [sys.executable, "-m", "pipelines.cli", "run", "--corpus", str(corpus),
                   "--workdir", str(scratch / "runs"), "--summary-json",
                   str(scratch / "summary.json"), *sum((["--set", o] for o in overrides), [])]
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{scratch / 'mlflow.db'}"}
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parents[1])
        wall = time.perf_counter() - started
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if done.returncode != 0:
            sys.exit(f"the run failed: {done.stderr.strip()[-500:]}")
        summary = json.loads((scratch / "summary.json").read_text())
        log = (Path(summary["run_dir"]) / "pipeline.log").read_text()
    print(f"corpus: {summary['n_label_blocks']} utterances, {summary['n_labelled']} in the "
          f"4-class set; {summary['n_train']} train, {summary['n_test']} test; "
          f"{args.epochs} epochs")
    for task, seconds in task_seconds(log).items():
        print(f"  {task:<9} {seconds:7.1f} s")
    print(f"wall {wall:.0f} s ({wall / 60:.1f} min; goal 4 min at 30 epochs), peak RSS "
          f"{peak_mb:.0f} MB (goal 3072 MB)")
    print(f"WA {summary['wa']:.3f}  UA {summary['ua']:.3f}; registered version "
          f"{summary['model_version']}, promoted {summary['promoted']}")


if __name__ == "__main__":
    main()
