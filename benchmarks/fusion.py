"""Fusion: the four model kinds on one generated corpus, scored overall and by where the
emotion is.

    .venv/bin/python benchmarks/fusion.py [--utterances 2000] [--seeds 0 1 2]
        [--kinds align speech text late_fusion] [--set key=value ...] [--workers 2]

It generates a corpus (corpus seed 3, like tests/test_train.py), takes it through ingest,
validate and features, then trains and evaluates each kind at each training seed with the
test's settings (hidden 32, 30 epochs, one thread per training, `--workers` trainings at a
time), holdout on session 5. It prints test UA, the modality ablation, the attention's lift
(mass on each word's own speech against an even spread), and accuracy by cue from the
corpus' truth file: `voice` utterances carry their emotion only in the voice, `text` only
in the words, `both` in both, `neutral` are neutral. An accuracy figure, not a timing: it
backs the table in the README, and a changed model or loss is compared here at three seeds
rather than on one test run.
"""

import argparse
import contextlib
import io
import itertools
import json
import shutil
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from components import evaluate, features, ingest, sample_corpus, train, validate  # noqa: E402
from components.config import load_config  # noqa: E402
from components.outputs import Evaluation  # noqa: E402

# The settings of tests/test_train.py's fusion test.
SETTINGS = ["train.epochs=30", "train.min_epochs=15", "model.hidden=32", "model.embed_dim=32",
            "model.attention_dim=32", "model.frame_pool=10", "train.threads=1"]
CUES = ("both", "voice", "text", "neutral")


def prepare(scratch: Path, utterances: int) -> None:
    corpus = scratch / "IEMOCAP_full_release"
    sample_corpus.generate(corpus, utterances, seed=3, workers=2)
    config = load_config(None, SETTINGS)
    ingest.run(corpus, scratch / "ingest")
    validate.run(scratch / "ingest", scratch / "validated", config.ingest.classes,
                 config.validate)
    features.run(scratch / "validated", scratch / "store", config.features)


def train_and_score(job: tuple) -> dict:
    scratch, kind, seed, overrides = job
    config = load_config(None, [*SETTINGS, *overrides, f"model.kind={kind}", f"seed={seed}"])
    model_dir, eval_dir = scratch / f"model_{kind}_{seed}", scratch / f"eval_{kind}_{seed}"
    with contextlib.redirect_stdout(io.StringIO()):  # the per-epoch lines
        train.run(scratch / "store", scratch / "validated", model_dir, config)
        metrics = evaluate.run(model_dir, scratch / "store", scratch / "validated", eval_dir,
                               config)
    return {"kind": kind, "seed": seed, "metrics": metrics,
            "predictions": pd.read_csv(eval_dir / Evaluation.PREDICTIONS)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utterances", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--kinds", nargs="+", default=["align", "speech", "text", "late_fusion"])
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="config overrides for every training")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="emoalign-fusion-"))
    try:
        prepare(scratch, args.utterances)
        truth = json.loads((scratch / "IEMOCAP_full_release" / sample_corpus.TRUTH_FILENAME)
                           .read_text())["utterances"]
        jobs = [(scratch, kind, seed, args.overrides)
                for kind, seed in itertools.product(args.kinds, args.seeds)]
        with ProcessPoolExecutor(args.workers) as pool:
            results = list(pool.map(train_and_score, jobs))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"{args.utterances} generated utterances (corpus seed 3), holdout session 5; "
          f"settings {' '.join(SETTINGS + args.overrides)}")
    print(f"{'kind':<12}{'seed':>4}  {'UA':>5}  {'-speech':>7} {'-text':>6}  {'lift':>5}  "
          + "  ".join(f"{c:>7}" for c in CUES) + "   (accuracy by cue)")
    for r in results:
        m, p = r["metrics"], r["predictions"]
        cue = p["utt_id"].map(lambda u: truth[u]["cue"])
        correct = p["label"] == p["predicted"]
        by_cue = "  ".join(f"{correct[cue == c].mean():7.3f}" if (cue == c).any() else
                           f"{'-':>7}" for c in CUES)
        ablation = m.get("ablation")
        lift = m.get("attention_alignment", {}).get("lift")
        print(f"{r['kind']:<12}{r['seed']:>4}  {m['ua']:.3f}  "
              + (f"{ablation['ua_without_speech']:7.3f} {ablation['ua_without_text']:6.3f}"
                 if ablation else f"{'-':>7} {'-':>6}")
              + (f"  {lift:5.2f}" if lift else f"  {'-':>5}") + f"  {by_cue}")
    print("mean UA over seeds: " + ", ".join(
        f"{kind} {np.mean([r['metrics']['ua'] for r in results if r['kind'] == kind]):.3f}"
        for kind in args.kinds))


if __name__ == "__main__":
    main()
