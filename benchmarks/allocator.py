"""glibc's malloc for training, set before the process starts (issue 34): the default run's
train task, trained in child processes taking turns, at a baseline commit and at this
checkout, in one invocation (these machines are noisy: only the ratios mean much).

    .venv/bin/python benchmarks/allocator.py [--baseline main] [--repeats 2] [--corpus DIR]

The sides, each a fresh process training the default config's model on the same feature
store (made once, by this checkout, from --corpus) the way the pipeline's train task and
`emoalign train` do (member.train_all):
- before: the baseline commit (in a git worktree, on PYTHONPATH), started as glibc leaves a
  process: until issue 34 training set glibc's malloc itself, around each model;
- after: this checkout, started with the GLIBC_TUNABLES that kfp.local's tasks, the image
  and `emoalign train | reproduce | audit` start with (environment.training_allocator);
- untouched: this checkout, started without them: what those settings are worth.
Per run: the training's own seconds (the train summary's), wall, user and system CPU, minor
page faults and peak RSS of that child alone (os.wait4), and model.pt's md5; then the
medians' ratios against `before`, and whether model.pt is the same bytes on every run.
Last, what `emoalign train`'s start again with the settings costs: the command with a bad
config key (answered before torch loads) with and without the settings already set.
"""

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components import environment  # noqa: E402

PREPARE = """
import sys
from pathlib import Path
from components import features, ingest, validate
from components.config import load_config
corpus, work = Path(sys.argv[1]), Path(sys.argv[2])
config = load_config()
ingest.run(corpus, work / "ingest")
validate.run(work / "ingest", work / "validated", config.ingest.classes, config.validate)
features.run(work / "validated", work / "store", config.features)
"""
TRAIN = """
import json, sys
from pathlib import Path
from components import member
from components.config import load_config
summary = member.train_all(*map(Path, sys.argv[1:4]), load_config())
print("RESULT " + json.dumps({"seconds": summary["seconds"]}))
"""


def untouched_environment(tree: Path) -> dict[str, str]:
    """This process's environment without glibc's malloc settings, `tree` on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items()
           if k != "GLIBC_TUNABLES" and not k.startswith("MALLOC_")}
    return {**env, "PYTHONPATH": str(tree), "MLFLOW_DISABLE_TELEMETRY": "true"}


def child(args: list[str], tree: Path, env: dict, log: Path) -> tuple[float, object, int]:
    """Run one child; its wall seconds, its own resource usage and exit status."""
    with log.open("w") as out:
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, *args], cwd=tree, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage, process.returncode


def train_once(tree: Path, env: dict, prepared: Path, out: Path) -> dict:
    log = out.with_suffix(".log")
    wall, usage, code = child(["-c", TRAIN, str(prepared / "store"), str(prepared / "validated"),
                               str(out)], tree, env, log)
    if code:
        raise SystemExit(f"training failed in {tree}:\n{log.read_text()[-3000:]}")
    result = json.loads(next(line for line in log.read_text().splitlines()
                             if line.startswith("RESULT "))[len("RESULT "):])
    [model] = out.glob("*/model.pt")
    return {"training": result["seconds"], "wall": wall, "user": usage.ru_utime,
            "sys": usage.ru_stime, "faults": usage.ru_minflt,
            "rss_gb": usage.ru_maxrss / 2**20, "md5": hashlib.md5(model.read_bytes()).hexdigest()}


def restart_cost(repeats: int, scratch: Path) -> None:
    """`emoalign train` answering a bad config key: started without the settings (it starts
    again with them) and with them (it does not), taking turns."""
    clean = untouched_environment(ROOT)
    sides = {"starts again": clean, "started with them": {
        **clean, **environment.training_allocator(clean)}}
    args = ["-m", "pipelines.cli", "train", "--store", "s", "--manifest", "m", "--out", "o",
            "--set", "no.such_key=1"]
    times = {name: [] for name in sides}
    for _ in range(repeats):
        for name, env in sides.items():
            wall, _, code = child(args, ROOT, env, scratch / "restart.log")
            assert code == 2, (scratch / "restart.log").read_text()
            times[name].append(wall)
    (again, once) = (statistics.median(t) for t in times.values())
    print(f"`emoalign train` to its config error, median of {repeats}: started without the "
          f"settings {again * 1000:.0f} ms (it starts again), with them {once * 1000:.0f} ms: "
          f"the restart costs {(again - once) * 1000:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="main",
                        help="the commit to compare with (default: main)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--corpus", type=Path, default=ROOT / "data",
                        help="the corpus (default: data/, the default run's)")
    args = parser.parse_args()
    if not environment.training_allocator({}):
        raise SystemExit("not glibc: there are no malloc settings to compare")
    git = ["git", "-C", str(ROOT)]
    base = subprocess.run([*git, "rev-parse", "--short", args.baseline], capture_output=True,
                          text=True, check=True).stdout.strip()
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    dirty = subprocess.run([*git, "diff", "--quiet", "HEAD"]).returncode != 0
    head += "+changes" if dirty else ""
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        baseline = scratch / "baseline"
        subprocess.run([*git, "worktree", "add", "--detach", str(baseline), base],
                       capture_output=True, check=True)
        try:
            _, _, code = child(["-c", PREPARE, str(args.corpus.resolve()), str(scratch / "prep")],
                               ROOT, untouched_environment(ROOT), scratch / "prepare.log")
            if code:
                raise SystemExit((scratch / "prepare.log").read_text()[-3000:])
            clean = untouched_environment(ROOT)
            sides = {
                f"before ({base})": (baseline, untouched_environment(baseline)),
                f"after ({head})": (ROOT, {**clean, **environment.training_allocator(clean)}),
                f"untouched ({head})": (ROOT, clean),
            }
            print(f"after's GLIBC_TUNABLES={sides[f'after ({head})'][1]['GLIBC_TUNABLES']}")
            runs = {name: [] for name in sides}
            for repeat in range(args.repeats):
                for i, (name, (tree, env)) in enumerate(sides.items()):
                    r = train_once(tree, env, scratch / "prep", scratch / f"{repeat}-{i}")
                    runs[name].append(r)
                    print(f"{name:<26} training {r['training']:5.1f} s  wall {r['wall']:5.1f} s"
                          f"  user {r['user']:5.1f} s  sys {r['sys']:4.1f} s  minor faults "
                          f"{r['faults'] / 1e6:4.2f} M  peak RSS {r['rss_gb']:.2f} GB  model.pt "
                          f"{r['md5'][:8]}", flush=True)
            restart_cost(5, scratch)
        finally:
            subprocess.run([*git, "worktree", "remove", "--force", str(baseline)],
                           capture_output=True)
    before = runs[f"before ({base})"]
    for name, side in list(runs.items())[1:]:
        for what in ("training", "wall", "sys", "faults"):
            b = statistics.median(r[what] for r in before)
            a = statistics.median(r[what] for r in side)
            unit = "M" if what == "faults" else "s"
            scale = 1e6 if what == "faults" else 1
            print(f"{name.split()[0]:<9} / before, {what:<8}: median {a / scale:5.2f} {unit} / "
                  f"{b / scale:5.2f} {unit} = {a / b:.2f}")
    digests = {r["md5"] for side in runs.values() for r in side}
    print(f"model.pt {'the same bytes on every run' if len(digests) == 1 else 'DIFFERS'}: "
          f"{', '.join(sorted(d[:8] for d in digests))}")


if __name__ == "__main__":
    main()
