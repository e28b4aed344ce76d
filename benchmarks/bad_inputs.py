"""The bad-input sweep as a table: every mistake in tests/test_bad_inputs.py run through the
CLI, with what emoalign answered and its exit code (2 = a user error, one line, no traceback).

    .venv/bin/python benchmarks/bad_inputs.py
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from corpora import sample_corpus  # noqa: E402
from test_bad_inputs import CASES, ENV_CASES, fill, scratch  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus" / "IEMOCAP_full_release"
        sample_corpus.generate(corpus, 60, seed=7)
        rows, bad = [], 0
        cases = [(w, a, {}, ans) for w, a, ans in CASES] + ENV_CASES
        for n, (what, argv, env, _) in enumerate(cases):
            work = scratch(Path(tempfile.mkdtemp(dir=tmp)))
            base = {"MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
                    "MLFLOW_DISABLE_TELEMETRY": "true"}
            done = subprocess.run([sys.executable, "-m", "pipelines.cli",
                                   *fill(argv, work, corpus)], cwd=ROOT, capture_output=True,
                                  text=True, env={**os.environ, **base, **env})
            lines = done.stderr.strip().splitlines()
            answer = lines[-1] if lines else ""
            clean = done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr
            bad += not clean
            shown = " ".join(argv).replace("|", "\\|")
            env_note = " ".join(f"{k}={v}" for k, v in env.items())
            answer = answer.replace(str(work), "{tmp}").replace(str(corpus), "{corpus}")
            rows.append(f"| {what} | `{(env_note + ' ') if env_note else ''}emoalign {shown}` "
                        f"| {answer.replace('|', '/')} | {done.returncode} |")
    print("| bad input | command | answer | exit |\n|---|---|---|---|")
    print("\n".join(rows))
    print(f"\n{len(rows) - bad} of {len(rows)} answered with one line and exit 2")


if __name__ == "__main__":
    main()
