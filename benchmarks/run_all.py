"""`make bench`: run every benchmark and rewrite benchmarks/RESULTS.md with the command, the
machine and what each printed. The notes after the NOTES marker (readings written by people)
are kept.

    .venv/bin/python benchmarks/run_all.py [--only NAME ...] [--corpus DIR]

The IEMOCAP-size corpus (10,039 utterances) the features, training and end-to-end
benchmarks share is generated once into a scratch folder unless --corpus names one.
"""

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
# Library chatter, not figures: warnings, MLflow's log lines and progress bars.
NOISE_RE = re.compile(r"Warning|warnings\.warn|^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d |"
                      r"Downloading artifacts|^Registered model '|^Created version '|^\s*$")
NOTES_MARKER = "<!-- NOTES: everything below is kept by `make bench` -->"

# name -> (script, arguments; {corpus} is the shared IEMOCAP-size release root)
BENCHMARKS = {
    "sample_corpus": ("sample_corpus.py", []),
    "features": ("features.py", ["--corpus", "{corpus}"]),
    "train": ("train.py", ["--corpus", "{corpus}"]),
    # Both corpora, holdout x 3 seeds, every reference (about 45 min on 2 cores).
    "fusion": ("fusion.py", []),
    # The most a joint model can lead late fusion by on the espeak-ng and flite plans: a
    # Bayes bound from the generator's distributions (30 s).
    "fusion_bound": ("fusion_bound.py", []),
    # Every kind scored on gold and on recognised transcripts, and the recogniser's WER and
    # speed (1,000 utterances per corpus, holdout x 3 seeds).
    "asr": ("asr.py", ["--train-asr", "align"]),
    # The fusion checks with bounds (exit 1 when one breaks): once unit tests, now here.
    "quality": ("quality.py", []),
    "orchestration": ("orchestration.py", []),
    # `emoalign run` + the no-op retrain, before issue 25 and now, taking turns.
    "default_run": ("default_run.py", []),
    "iemocap_size": ("iemocap_size.py", ["--corpus", "{corpus}"]),
    "faults": ("faults.py", []),
    "bad_inputs": ("bad_inputs.py", []),
    "cross_env": ("cross_env.py", []),
    "fanout": ("fanout.py", []),
}


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        memory = next(int(line.split()[1]) // 1024 // 1024 for line in
                      Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal"))
    except OSError:
        memory = 0
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, {memory} GiB, {gpu}; Python "
            f"{platform.python_version()}, torch {torch.__version__}, {platform.system()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=list(BENCHMARKS))
    parser.add_argument("--corpus", type=Path, help="an IEMOCAP-size release root to reuse")
    args = parser.parse_args()
    chosen = args.only or list(BENCHMARKS)
    notes, kept = "", {}
    if RESULTS.is_file() and NOTES_MARKER in RESULTS.read_text():
        generated, notes = RESULTS.read_text().split(NOTES_MARKER, 1)
        # Sections of benchmarks not run this time stay as they were.
        for part in generated.split("\n## ")[1:]:
            kept[part.split(" ", 1)[0]] = "## " + part.rstrip() + "\n"
    sections = {}
    with tempfile.TemporaryDirectory() as scratch:
        corpus = args.corpus
        if corpus is None and any("{corpus}" in a for n in chosen for a in BENCHMARKS[n][1]):
            sys.path.insert(0, str(ROOT))
            from corpora import sample_corpus

            corpus = Path(scratch) / "IEMOCAP_full_release"
            print(f"generating the IEMOCAP-size corpus in {corpus}", flush=True)
            sample_corpus.generate(corpus, 10_039, seed=0, workers=os.cpu_count() or 1)
        for name in chosen:
            script, extra = BENCHMARKS[name]
            argv = [a.replace("{corpus}", str(corpus)) for a in extra]
            shown = " ".join([".venv/bin/python", f"benchmarks/{script}",
                              *[a if a != str(corpus) else "<IEMOCAP-size corpus>"
                                for a in argv]])
            print(f"== {shown}", flush=True)
            started = time.perf_counter()
            done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *argv],
                                  cwd=ROOT, capture_output=True, text=True)
            seconds = time.perf_counter() - started
            output = "\n".join(line for line in (done.stdout + done.stderr).splitlines()
                               if not NOISE_RE.search(line))
            print(output, flush=True)
            doc = (ROOT / "benchmarks" / script).read_text().split('"""')[1].strip()
            sections[name] = (f"## {name} (`benchmarks/{script}`)\n\n{doc}\n\n"
                              f"Command: `{shown}` ({seconds:.0f} s, exit {done.returncode})"
                              f"\n\n```\n{output.strip()}\n```\n")
    header = (f"# Benchmark results\n\nWritten by `make bench` (benchmarks/run_all.py) "
              f"({datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}).\n\n"
              f"Machine: {machine()}.\n\n")
    ordered = [sections.get(n) or kept.get(n) for n in BENCHMARKS]
    RESULTS.write_text(header + "\n".join(s for s in ordered if s) + "\n" + NOTES_MARKER
                       + notes)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
