"""A reshaping of the code changes no output: the pipeline's steps run in this process
(pipelines/inprocess.py, as `emoalign audit` runs them) on the default corpus and config, at
a baseline commit and at this checkout, and every file they write is compared byte for byte.

    .venv/bin/python benchmarks/same_outputs.py [--baseline REV]

Some bytes differ by nature, and are set aside before comparing: JSON values that are
clock readings (`seconds` of wall time, Great Expectations' run and load times), the run's
own folder in paths, Great Expectations' random ids, and
the checkpoint (the last epoch's optimiser and selection state, which a reshaping may
lay out anew; the weights it leads to are in model.pt). Prints each file that differs, and
exits 1 when one differs beyond those.
"""

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import sys
from pathlib import Path
from components.config import load_config
from pipelines.inprocess import run_steps
out = Path(sys.argv[1])
run_steps(Path(sys.argv[2]), load_config(None, [f"features.cache_dir={out}/cache"]), out / "steps")
"""
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
NOT_COMPARED = {"checkpoint.pt"}
CLOCK_KEYS = {"seconds", "ge_load_time", "run_time", "validation_time"}


def _run(tree: Path, out: Path, corpus: Path) -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(out), str(corpus)], cwd=tree,
                          env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin",
                               "MLFLOW_DISABLE_TELEMETRY": "true"},
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the steps failed in {tree}:\n{done.stderr[-2000:]}")


def _comparable(data: bytes, run_dir: Path, name: str) -> bytes:
    text = data.decode(errors="surrogateescape").replace(str(run_dir), "<run>")
    if name.endswith(".json"):
        def strip(node):
            if isinstance(node, dict):
                return {k: strip(v) for k, v in node.items() if k not in CLOCK_KEYS}
            return [strip(v) for v in node] if isinstance(node, list) else node
        text = json.dumps(strip(json.loads(text)), sort_keys=True)
    return UUID_RE.sub("<id>", text).encode(errors="surrogateescape")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="HEAD~1")
    parser.add_argument("--corpus", type=Path, default=ROOT / "data")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach",
                        str(tmp / "tree"), args.baseline], check=True, capture_output=True)
        try:
            _run(tmp / "tree", tmp / "before", args.corpus.resolve())
            _run(ROOT, tmp / "after", args.corpus.resolve())
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(tmp / "tree")], capture_output=True)
        before, after = tmp / "before" / "steps", tmp / "after" / "steps"
        names = sorted({p.relative_to(side) for side in (before, after)
                        for p in side.rglob("*") if p.is_file()})
        same = differing = 0
        for name in names:
            if name.name in NOT_COMPARED:
                continue
            a, b = before / name, after / name
            if not (a.is_file() and b.is_file()):
                print(f"only {'after' if b.is_file() else 'before'}: {name}")
                differing += 1
            elif a.read_bytes() == b.read_bytes():
                same += 1
            elif (_comparable(a.read_bytes(), tmp / "before", name.name)
                  == _comparable(b.read_bytes(), tmp / "after", name.name)):
                same += 1
                print(f"same but for clock readings, paths and ids: {name}")
            else:
                differing += 1
                print(f"DIFFERS: {name}")
                if name.suffix == ".json":
                    old = json.loads(_comparable(a.read_bytes(), tmp / "before", name.name))
                    new = json.loads(_comparable(b.read_bytes(), tmp / "after", name.name))
                    for key in sorted(set(old) | set(new)) if isinstance(old, dict) else []:
                        if old.get(key) != new.get(key):
                            print(f"  {key}: {old.get(key)!r} -> {new.get(key)!r}"[:300])
    print(f"{same} files the same, {differing} different ({args.baseline} -> this checkout)")
    sys.exit(1 if differing else 0)


if __name__ == "__main__":
    main()
