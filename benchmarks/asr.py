"""Recognised transcripts: what each model kind loses when its test utterances come with the
words a speech recogniser hears instead of the corpus' transcripts, and what recognition
costs.

    .venv/bin/python benchmarks/asr.py [--voices tts builtin flite] [--utterances 1000]
        [--seeds 0 1 2] [--kinds align speech text late_fusion] [--train-asr align ...]
        [--workers 2] [--cache DIR] [--set key=value ...]

For each voice it prepares a corpus as benchmarks/fusion.py does (corpus seed 3: espeak-ng
speech with `tts`, flite speech with `flite`, the builtin synthesiser's voiceless signals
with `builtin`; ingest, validate, features), has `serving.recognizer` transcribe the
held-out session's utterances (timed: utterances per second, and the real-time factor on
one core), and then
trains every (kind, seed) at fusion.py's benchmark settings and evaluates each model twice:
on the gold transcripts and on the recognised ones (`evaluate.transcripts=asr`). Kinds
named by `--train-asr` are also trained on recognised transcripts (`train.transcripts=asr`,
the paper's ASR setting), shown as `<kind>@asr`. It prints, per corpus, the recogniser's
word error rate on the test utterances, UA and WA (mean ± std over seeds) with gold and
with recognised transcripts, and paired UA differences over the same seeds: each kind
against speech alone on recognised transcripts (the goal: align no worse).
With `--cache DIR`, corpora, feature stores and recognised transcripts are kept and reused.
"""

import argparse
import contextlib
import io
import itertools
import shutil
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import fusion  # noqa: E402
from components import evaluate, folds, member, train  # noqa: E402
from components.config import load_config  # noqa: E402
from components.transcripts import Transcriber, recognised_rows  # noqa: E402

FOLD = "session5"  # holdout, as fusion.py's default


def config_of(kind: str, seed: int, overrides: list[str], cache: Path, trained_on: str):
    return load_config(None, [*fusion.SETTINGS, *overrides, f"model.kind={kind}", f"seed={seed}",
                              "protocol=holdout", f"features.cache_dir={cache}",
                              "features.workers=1", f"train.transcripts={trained_on}"])


def recognise(folder: Path, overrides: list[str], cache: Path, train_too: bool) -> dict:
    """Recognise the test utterances (and, for --train-asr, the training ones) once, into
    the cache every model then reads: the recogniser's word error rate and speed."""
    config = config_of("align", 0, overrides, cache, "gold")
    config.features.workers = 0  # every core: nothing else runs yet
    _, rows = train.load_inputs(folder / "store", folder / "validated", config)
    task = folds.task_of(rows, config, FOLD)
    transcriber = Transcriber.of(config)
    _, test = recognised_rows(rows, task.split.test_ids, transcriber)
    if train_too:
        recognised_rows(rows, task.split.train_ids + task.split.val_ids, transcriber)
    return test


def one_model(job: tuple) -> list[dict]:
    """Train (kind, seed) and evaluate it on gold and on recognised transcripts."""
    folder, kind, seed, overrides, cache, trained_on = job
    config = config_of(kind, seed, overrides, cache, trained_on)
    who = kind if trained_on == "gold" else f"{kind}@asr"
    name = f"{who}_{seed}"
    out = []
    with contextlib.redirect_stdout(io.StringIO()):  # the per-epoch lines
        store, rows = train.load_inputs(folder / "store", folder / "validated", config)
        model_dir = folder / "m" / name
        gold = member.run_member(folds.task_of(rows, config, FOLD), store, rows, config,
                                 model_dir, folder / "e" / name)["metrics"]
        config.evaluate.transcripts = "asr"
        asr = evaluate.evaluate_model(model_dir, store, rows, folder / "e" / f"{name}-asr",
                                      config)
    for condition, metrics in (("gold", gold), ("asr", asr)):
        out.append({"who": who, "condition": condition, "fold": FOLD, "seed": seed,
                    "ua": metrics["ua"], "wa": metrics["wa"],
                    "ablation": metrics.get("ablation"),
                    "improvised_ua": metrics["per_subset"].get("improvised", {}).get("ua")})
    return out


def report(voice: str, test: dict, results: list[dict]) -> None:
    speed = (f"{test['recognised_now']} recognised ({test['audio_seconds']:.0f} s of audio) "
             f"at {test['utterances_per_core_s']:.2f} utterances/s per core, "
             f"{test['real_time_factor']:.3f} x real time"
             if test["recognised_now"] else "all read from the cache (no speed measured)")
    print(f"-- {voice} corpus, {FOLD} held out: {test['recognizer']} on {test['utterances']} "
          f"test utterances: WER {test['wer']:.3f} ({test['word_errors']} errors / "
          f"{test['words']} words); {speed}")
    print(f"{'':<16}{'UA gold':>15}{'UA asr':>15}{'ΔUA':>8}{'WA gold':>15}{'WA asr':>15}"
          f"{'impro UA asr':>14}")
    for who in dict.fromkeys(r["who"] for r in results):
        cells = {c: [r for r in results if r["who"] == who and r["condition"] == c]
                 for c in ("gold", "asr")}
        ua = {c: np.array([r["ua"] for r in v]) for c, v in cells.items()}
        wa = {c: np.array([r["wa"] for r in v]) for c, v in cells.items()}
        improvised = [r["improvised_ua"] for r in cells["asr"] if r["improvised_ua"] is not None]
        print(f"{who:<16}{ua['gold'].mean():7.3f} ± {ua['gold'].std():.3f}"
              f"{ua['asr'].mean():7.3f} ± {ua['asr'].std():.3f}"
              f"{ua['asr'].mean() - ua['gold'].mean():+8.3f}"
              f"{wa['gold'].mean():7.3f} ± {wa['gold'].std():.3f}"
              f"{wa['asr'].mean():7.3f} ± {wa['asr'].std():.3f}"
              f"{np.mean(improvised) if improvised else float('nan'):14.3f}   (n={len(ua['asr'])})")
    for who in dict.fromkeys(r["who"] for r in results):
        ablations = [r["ablation"] for r in results
                     if r["who"] == who and r["condition"] == "asr" and r["ablation"]]
        if ablations:
            print(f"{who} ablation on recognised transcripts (mean UA): " + ", ".join(
                f"{k} {np.mean([a[k] for a in ablations]):.3f}" for k in ablations[0]))
    on_asr = [r for r in results if r["condition"] == "asr"]
    print("paired UA differences on recognised transcripts, over the same seeds:")
    for who in dict.fromkeys(r["who"] for r in on_asr):
        if who != "speech":
            line = fusion.paired(on_asr, who, "speech")
            if line:
                print("  " + line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voices", nargs="+", default=["tts", "builtin"],
                        choices=["builtin", "tts", "flite"])
    parser.add_argument("--utterances", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--kinds", nargs="+", default=["align", "speech", "text", "late_fusion"])
    parser.add_argument("--train-asr", nargs="*", default=[], metavar="KIND",
                        help="also train these kinds on recognised transcripts")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="config overrides for every training")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache", type=Path,
                        help="keep corpora, feature stores and transcripts here and reuse them")
    args = parser.parse_args()
    print(f"{args.utterances} utterances per corpus (corpus seed 3), holdout {FOLD} x seeds "
          f"{args.seeds}; {' '.join(fusion.SETTINGS + args.overrides)}", flush=True)
    scratch = Path(tempfile.mkdtemp(prefix="emoalign-asr-"))
    cache = (args.cache or scratch).resolve()
    try:
        for voice in args.voices:
            folder = fusion.prepare(scratch, voice, args.utterances, args.overrides,
                                    args.cache)
            test = recognise(folder, args.overrides, cache, bool(args.train_asr))
            jobs = [(folder, kind, seed, args.overrides, cache, trained_on)
                    for trained_on, kinds in (("gold", args.kinds), ("asr", args.train_asr))
                    for kind, seed in itertools.product(kinds, args.seeds)]
            with ProcessPoolExecutor(args.workers) as pool:
                results = [r for part in pool.map(one_model, jobs) for r in part]
            report(voice, test, results)
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
