"""How far the default run moves when only the CPU kernels change.

    .venv/bin/python benchmarks/cross_env.py [--corpus DIR] [--set key=value ...]

Runs the pipeline's steps (`emoalign reproduce`: same data, code, config and seed) once per
CPU capability this machine offers (ATEN_CPU_CAPABILITY = default, avx2, avx512), and prints
each run's UA and WA, then, against the machine's own capability: the differences, the share
of test utterances predicted alike, whether the weights are bit-identical, and whether the
difference lies within the tolerance `emoalign audit` applies (half the 95 % bootstrap
interval of the recorded scores).
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from components.environment import cpu_model  # noqa: E402
from components.outputs import StepOutputs  # noqa: E402
from model.metrics import bootstrap_intervals  # noqa: E402


def offered_capabilities() -> list[str]:
    """The kernel sets PyTorch can dispatch to on this CPU, plainest first."""
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    offered = ["default"]
    if "avx2" in flags:
        offered.append("avx2")
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        offered.append("avx512")
    return offered


def reproduce(capability: str, corpus: Path, out: Path, overrides: list[str]) -> StepOutputs:
    sets = sum((["--set", o] for o in overrides), [])
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "reproduce", "--corpus",
                           str(corpus), "--out", str(out), *sets], cwd=ROOT,
                          env={**os.environ, "ATEN_CPU_CAPABILITY": capability},
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"reproduce under {capability} failed: {done.stderr.strip()[-500:]}")
    return StepOutputs.of_steps_dir(out)


def same_weights(a: StepOutputs, b: StepOutputs) -> bool:
    for fold, path in a.trained.bundles().items():
        left = torch.load(path, weights_only=True)["state_dict"]
        right = torch.load(b.trained.bundles()[fold], weights_only=True)["state_dict"]
        if not all(torch.equal(left[k], right[k]) for k in left):
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=ROOT / "data")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    native = torch.backends.cpu.get_cpu_capability().lower()
    capabilities = offered_capabilities()
    print(f"CPU: {cpu_model()}; native kernels {native}; runs under {', '.join(capabilities)}")
    with tempfile.TemporaryDirectory() as scratch:
        runs = {c: reproduce(c, args.corpus, Path(scratch) / c, args.overrides)
                for c in capabilities}
        metrics = {c: r.evaluation.metrics() for c, r in runs.items()}
        print(f"\n{'capability':<11} {'UA':>6} {'WA':>6}")
        for c in capabilities:
            print(f"{c:<11} {metrics[c]['ua']:.4f} {metrics[c]['wa']:.4f}")
        uas = np.array([m["ua"] for m in metrics.values()])
        print(f"UA spread: max - min {uas.max() - uas.min():.4f}, std {uas.std():.4f} "
              f"over {len(uas)} kernel sets")
        reference = native if native in runs else capabilities[-1]
        before = runs[reference].evaluation.predictions()
        classes = metrics[reference]["classes"]
        ids = {c: i for i, c in enumerate(classes)}
        intervals = bootstrap_intervals(before["label"].map(ids), before["predicted"].map(ids),
                                        before["session"], len(classes), 1000)
        tolerance = {k: (high - low) / 2 for k, (low, high) in intervals.items()}
        print(f"\nagainst {reference} (audit tolerance: UA ±{tolerance['ua']:.4f}, "
              f"WA ±{tolerance['wa']:.4f}):")
        for c in capabilities:
            if c == reference:
                continue
            paired = before.merge(runs[c].evaluation.predictions(), on="utt_id",
                                  suffixes=("", "_other"))
            agree = float(np.mean(paired["predicted"] == paired["predicted_other"]))
            d_ua = metrics[c]["ua"] - metrics[reference]["ua"]
            d_wa = metrics[c]["wa"] - metrics[reference]["wa"]
            within = abs(d_ua) <= tolerance["ua"] and abs(d_wa) <= tolerance["wa"]
            print(f"  {c:<9} dUA {d_ua:+.4f}  dWA {d_wa:+.4f}  predictions agree "
                  f"{agree:.1%} of {len(paired)}  weights bit-identical "
                  f"{same_weights(runs[c], runs[reference])}  within tolerance {within}")


if __name__ == "__main__":
    main()
