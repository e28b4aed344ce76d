"""How fast the sample corpus is generated and ingested.

    .venv/bin/python benchmarks/sample_corpus.py [--utterances 10039] [--workers 2]

Prints audio-seconds generated per wall-second on one core (goal: 100x real time or more),
the speed-up from worker processes measured in the same run, the share of time spent
writing files (measured against writing the same bytes without synthesis), ingest's
throughput over the result, and peak RSS.
"""

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components import ingest  # noqa: E402
from components.config import IngestConfig  # noqa: E402
from corpora import sample_corpus  # noqa: E402


def generate(root: Path, n: int, workers: int) -> tuple[float, dict]:
    shutil.rmtree(root, ignore_errors=True)
    start = time.perf_counter()
    truth = sample_corpus.generate(root, n, seed=0, workers=workers)
    return time.perf_counter() - start, truth


def write_only(src: Path, dst: Path) -> float:
    """Copy every file of the corpus: the I/O floor of generation."""
    shutil.rmtree(dst, ignore_errors=True)
    start = time.perf_counter()
    shutil.copytree(src, dst)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utterances", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: tmp)")
    args = parser.parse_args()

    scratch = Path(args.dir or tempfile.mkdtemp(prefix="emoalign-bench-"))
    one, many, copy = scratch / "one", scratch / "many", scratch / "copy"
    print(f"machine: {os.cpu_count()} cpus; {args.utterances} utterances")

    t1, truth = generate(one, args.utterances, workers=1)
    audio = truth["total_audio_seconds"]
    print(f"audio generated: {audio / 3600:.2f} h ({audio / args.utterances:.2f} s mean)")
    print(f"1 worker:  {t1:7.1f} s  {audio / t1:7.0f}x real time")
    tn, _ = generate(many, args.utterances, workers=args.workers)
    print(f"{args.workers} workers: {tn:7.1f} s  {audio / tn:7.0f}x real time  "
          f"speed-up {t1 / tn:.2f}x")
    tc = write_only(one, copy)
    print(f"copying the same files: {tc:.1f} s = {tc / t1:.0%} of one-worker generation")

    start = time.perf_counter()
    manifest, report = ingest.scan(one, IngestConfig())
    ti = time.perf_counter() - start
    print(f"ingest: {ti:.1f} s, {len(manifest) / ti:,.0f} utterances/s, "
          f"{report['problem_count']} problems")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak RSS: {peak:.0f} MB (largest worker {children:.0f} MB)")
    if args.dir is None:
        shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
