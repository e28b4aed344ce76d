"""The project image's build, before and after: `infra/image.py build` at a baseline commit
and at this checkout, in the same invocation, each with no layer of its own cached, and then
this checkout's build again after a change to the code only.

    .venv/bin/python benchmarks/image_build.py [--baseline REV]

It prints, per build, the free disk it took at its peak (`disk_peak_gb`, sampled each second
under /var/lib/containers by infra/image.py), the seconds of `buildah bud`, the image's size
and its largest layer, and the ratios this checkout / baseline. The wheelhouse and the base
are reused by both sides (they depend on the lock and the debootstrap recipe, not on the
Dockerfile), so what differs is the build itself.

To build cold, it removes every image the builds' label names from buildah's store first,
`emoalign:0.1.0` included (`make image` builds it again in a few minutes); each side is
tagged emoalign:bench-* and removed after it is measured, to make room for the next. The
baseline side needs the free disk that commit's build asked for (40 GB before the layered
build).
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "infra"))
import image  # noqa: E402  (infra/image.py)

TAGS = {"baseline": "emoalign:bench-baseline", "this checkout": "emoalign:bench-checkout"}


def clear_store() -> None:
    """Remove every image of the project's builds: tagged ones, then what they leave."""
    for tag in ["emoalign:0.1.0", *TAGS.values()]:
        if image.image_id(tag):
            image.remove_image(tag)
    image.remove_leftovers()
    # Images built before the label existed are tagged; they went above.


def largest_layer_gb(tag: str) -> float | None:
    found = image.layers(tag)
    return max(layer["bytes"] for layer in found) / 1e9 if found else None


def build(tree: Path, tag: str, work: Path, name: str) -> dict:
    record_path = work / f"{name}.json"
    done = subprocess.run(
        [sys.executable, str(tree / "infra" / "image.py"), "build", "--tag", tag,
         "--log", str(work / f"{name}.log"), "--json", str(record_path),
         "--min-free-gb", "0"], cwd=tree, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the {name} build failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    record = json.loads(record_path.read_text())
    return {"disk_peak_gb": record["disk_peak_gb"], "bud_s": record["seconds"]["build"],
            "image_gb": record["bytes"] / 1e9, "largest_layer_gb": largest_layer_gb(tag),
            "steps_built": record.get("steps_built")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default="7a7317d",
                        help="the commit before the layered build (default 7a7317d)")
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory(prefix="image-bench-") as tmp:
        work = Path(tmp)
        tree = work / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet",
                        str(tree), args.baseline], check=True)
        try:
            clear_store()
            print(f"baseline {args.baseline} ...", flush=True)
            results["baseline"] = build(tree, TAGS["baseline"], work, "baseline")
            clear_store()
            print("this checkout ...", flush=True)
            results["this checkout"] = build(ROOT, TAGS["this checkout"], work, "checkout")
            # A change to the code only: the dependency layers come from the cache.
            marker = ROOT / "model" / "__init__.py"
            original = marker.read_text()
            marker.write_text(original + "# image_build.py: a change to the code only\n")
            try:
                print("this checkout, the code changed ...", flush=True)
                results["code changed"] = build(ROOT, TAGS["this checkout"], work, "again")
            finally:
                marker.write_text(original)
            clear_store()
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(tree)], check=False)
    print(f"{'build':16} {'peak disk GB':>12} {'bud s':>7} {'image GB':>9} "
          f"{'largest layer GB':>17} {'steps built':>12}")
    for name, r in results.items():
        layer = f"{r['largest_layer_gb']:.2f}" if r["largest_layer_gb"] else "?"
        print(f"{name:16} {r['disk_peak_gb']:12.1f} {r['bud_s']:7.0f} {r['image_gb']:9.2f} "
              f"{layer:>17} {str(r['steps_built'] or '-'):>12}")
    before, after = results["baseline"], results["this checkout"]
    print(f"peak disk, this checkout / baseline: "
          f"{after['disk_peak_gb'] / before['disk_peak_gb']:.2f}; buildah bud time: "
          f"{after['bud_s'] / before['bud_s']:.2f} cold, "
          f"{results['code changed']['bud_s'] / before['bud_s']:.3f} after a code change")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
