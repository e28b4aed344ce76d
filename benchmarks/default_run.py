"""The default run, before and after: `emoalign run` on the default corpus and config, and the
no-op `emoalign retrain` that follows it, at a baseline commit and at this checkout, taking
turns in the same invocation (these machines are noisy: only the ratio means much).

    .venv/bin/python benchmarks/default_run.py [--baseline REV] [--repeats 2] [--retrain-only]

Each side runs in a fresh working folder (fresh feature cache, fresh SQLite MLflow store),
as a new user's first `make run` does, from its own tree (the baseline in a git worktree,
on PYTHONPATH), with this virtual environment. It prints, per side, the pipeline's own time
(what `emoalign run` reports as "pipeline finished in"), the command's wall time, the no-op
retrain's wall time, the ratio after / before of the medians, and whether the two sides
reached the same metrics bit for bit (the summary's WA, UA and confusion matrix).

With --retrain-only, each side makes one `emoalign run` (its champion) and the no-op retrain
alone is timed, `--repeats` times per side, the sides taking turns.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIPELINE_RE = re.compile(r"pipeline finished in ([0-9.]+) s")


def _emoalign(tree: Path, work: Path, *args: str) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(tree), "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=tree, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"emoalign {' '.join(args)} failed in {tree}:\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def first_run(tree: Path, work: Path) -> dict:
    work.mkdir(parents=True)
    summary = work / "summary.json"
    wall, out = _emoalign(tree, work, "run", "--workdir", str(work),
                          "--summary-json", str(summary))
    metrics = json.loads(summary.read_text())
    return {"pipeline": float(PIPELINE_RE.search(out).group(1)), "wall": wall,
            "metrics": {k: metrics[k] for k in ("wa", "ua", "confusion")}}


def no_op_retrain(tree: Path, work: Path) -> float:
    retrain, again = _emoalign(tree, work, "retrain", "--workdir", str(work))
    if "nothing to retrain" not in again:
        raise SystemExit(f"the retrain after the run in {tree} trained again: is the tree "
                         "committed? (uncommitted code always counts as changed)")
    return retrain


def one_side(tree: Path, work: Path) -> dict:
    result = first_run(tree, work)
    return {**result, "retrain": no_op_retrain(tree, work)}


def retrain_only(sides: dict, scratch: Path, repeats: int) -> None:
    """One run per side (its champion), then the no-op retrains alone, taking turns."""
    for name, tree in sides.items():
        ran = first_run(tree, scratch / name.split()[0])
        print(f"{name:<18} `emoalign run` {ran['wall']:5.1f} s (its champion)", flush=True)
    times = {name: [] for name in sides}
    for _ in range(repeats):
        for name, tree in sides.items():
            times[name].append(no_op_retrain(tree, scratch / name.split()[0]))
            print(f"{name:<18} no-op retrain {times[name][-1]:4.1f} s", flush=True)
    (b, a) = (statistics.median(t) for t in times.values())
    print(f"retrain   median before {b:5.1f} s, after {a:5.1f} s: after / before {a / b:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="03ebb38",
                        help="the commit to compare with (default: before issue 25)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--retrain-only", action="store_true",
                        help="time the no-op retrain alone, after one run per side")
    args = parser.parse_args()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        baseline = scratch / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(baseline),
                        args.baseline], capture_output=True, check=True)
        # Both sides read the same corpus: data/ of this checkout, made once.
        (baseline / "data").symlink_to(ROOT / "data")
        try:
            sides = {f"before ({args.baseline})": baseline, f"after ({head})": ROOT}
            if args.retrain_only:
                return retrain_only(sides, scratch, args.repeats)
            runs = {name: [] for name in sides}
            for repeat in range(args.repeats):
                for name, tree in sides.items():
                    result = one_side(tree, scratch / f"{repeat}-{name.split()[0]}")
                    runs[name].append(result)
                    print(f"{name:<18} pipeline {result['pipeline']:5.1f} s  `emoalign run` "
                          f"{result['wall']:5.1f} s  no-op retrain {result['retrain']:4.1f} s",
                          flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(baseline)], capture_output=True)
    (before, after) = runs.values()
    for what in ("pipeline", "wall", "retrain"):
        b = statistics.median(r[what] for r in before)
        a = statistics.median(r[what] for r in after)
        print(f"{what:<9} median before {b:5.1f} s, after {a:5.1f} s: after / before {a / b:.2f}")
    same = all(r["metrics"] == before[0]["metrics"] for r in before + after)
    print(f"metrics (WA, UA, confusion) {'identical' if same else 'DIFFER'} on every run: "
          f"WA {after[0]['metrics']['wa']:.4f}, UA {after[0]['metrics']['ua']:.4f}")


if __name__ == "__main__":
    main()
