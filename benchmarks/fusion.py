"""Fusion: the four model kinds against each other and against straightforward references,
on the generated corpus, on espeak-ng speech, on espeak-ng's stressed corpus and on flite
speech, over folds and seeds.

    .venv/bin/python benchmarks/fusion.py [--voices builtin tts stress flite]
        [--utterances 2000]
        [--protocol holdout|loso] [--seeds 0 1 2] [--kinds align speech text late_fusion]
        [--references speech text late_fusion align] [--config FILE] [--set key=value ...]
        [--workers 2] [--cache DIR] [--save FILE] [--against FILE]

For each voice it generates a corpus (corpus seed 3: the builtin synthesiser, espeak-ng with
`--voice tts`, `stress`: espeak-ng with `--voice tts --stress`, where each utterance names
two emotions, stresses one and is labelled by it, cache key `stress-N`; or `flite`: flite with
`--voice flite`, the same plan in other voices, cache key `flite-N`), takes it through
ingest, validate and features, then trains and evaluates every (kind, fold, seed) with
emoalign's recipe at the benchmark's settings (hidden 32, 30 epochs, one thread per
training, `--workers` at a time), and the same folds and seeds
with benchmarks/reference.py's straightforward implementations (40 MFCCs, BiLSTM-64 over
every frame, 25 epochs, last epoch). It prints, per corpus:
- UA and WA, mean ± std over the (fold, seed) models, for each kind and each reference;
- paired comparisons over the same (fold, seed): align minus each other kind, and each of
  our kinds minus its reference (mean ± std of the difference, wins, paired t-test p);
- accuracy by cue from the corpus' truth file (`voice`: emotion only in the voice, `text`:
  only in the words, `both`, `neutral`); on the stressed corpus instead, accuracy when the
  stressed word is the first or the second emotion word (a model that reads the words but
  does not hear the stress is right about half the time in both);
- for align, the accuracy by cue of its speech and text heads (train.unimodal_loss) on
  their own, the modality ablation and the attention lift (attention mass on a word's own
  speech frames over what uniform attention puts there, from the .wdseg timings: 1 is no
  alignment), mean ± std over the models.
With `--config FILE` ours train from that file (a preset: configs/xu2019.yaml) on one thread
each instead of the benchmark's model size, and with a class set of its own the corpus is
ingested into a manifest of its own. With `--save FILE` every model's UA and WA go to FILE
(JSON); `--against FILE` compares this run with such a file, kind by kind over the same
(fold, seed): how two recipes differ, paired, with each one's seed spread.
An accuracy figure, not a timing: it backs the fusion tables of benchmarks/RESULTS.md
(summarised in docs/model.md).
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

import reference  # noqa: E402
from components import features, folds, ingest, member, train, validate  # noqa: E402
from components.config import IngestConfig, load_config  # noqa: E402
from components.outputs import Evaluation  # noqa: E402
from corpora import sample_corpus  # noqa: E402

# The benchmark's model size (the fusion test's): small enough for 2 cores.
SETTINGS = ["train.epochs=30", "train.min_epochs=15", "model.hidden=32", "model.embed_dim=32",
            "model.attention_dim=32", "model.frame_pool=10", "train.threads=1"]
CUES = ("both", "voice", "text", "neutral")
# The stressed corpus' utterances all have cue "stress": its columns are where the stressed
# word sits instead.
STRESS_COLUMNS = ("first", "second")


def recipe(config_file: Path | None) -> list[str]:
    """The settings under `--set`: the benchmark's model size, or with a config file (a
    preset such as configs/xu2019.yaml) that file's own, on one thread per training."""
    return SETTINGS if config_file is None else ["train.threads=1"]


def prepare(scratch: Path, voice: str, utterances: int, overrides: list[str],
            cache: Path | None = None, config_file: Path | None = None,
            without_session: int | None = None) -> Path:
    """The corpus, its validated manifest, our feature store and the reference's. With
    `cache`, the corpus, manifest and stores are kept there and reused by later runs (the
    stores keyed by their feature settings); `scratch` then links to them. With
    `without_session`, that session's utterances are left out of the manifest (--select:
    the test session is never read)."""
    folder = scratch / voice
    kept = cache / f"{voice}-{utterances}" if cache else folder
    corpus = kept / "IEMOCAP_full_release"
    if not (corpus / sample_corpus.TRUTH_FILENAME).is_file():
        renderer = None
        if voice in ("tts", "stress"):
            from corpora import tts_corpus

            renderer = tts_corpus.TtsRenderer()
        elif voice == "flite":
            from corpora import flite_corpus

            renderer = flite_corpus.FliteRenderer()
        shutil.rmtree(corpus, ignore_errors=True)
        sample_corpus.generate(corpus, utterances, seed=3, workers=2, renderer=renderer,
                               stress=voice == "stress")
    config = load_config(config_file, [*recipe(config_file), *overrides])
    # Another class set (a preset's) labels the corpus otherwise: its own manifest.
    labels = config.ingest.label_map()
    validated = "validated" if labels == IngestConfig().label_map() else \
        "validated-" + "-".join(f"{code}={name}" for code, name in sorted(labels.items()))
    if not (kept / validated).is_dir():
        ingest.run(corpus, kept / f"ingest{validated.removeprefix('validated')}",
                   config.ingest)
        validate.run(kept / f"ingest{validated.removeprefix('validated')}", kept / validated,
                     config.ingest.classes, config.validate)
    if without_session is not None:
        validated = without(kept, validated, without_session)
    folder.mkdir(parents=True, exist_ok=True)
    if cache:
        (folder / "IEMOCAP_full_release").symlink_to(kept / "IEMOCAP_full_release")
    if not (folder / "validated").exists():
        (folder / "validated").symlink_to(kept / validated)
    stores = kept / "stores" if cache else None
    features.run(folder / "validated", folder / "store", config.features, stores)
    features.run(folder / "validated", folder / "refstore",
                 reference.reference_store_config(workers=2), stores)
    return folder


def without(kept: Path, validated: str, session: int) -> str:
    """A copy of the validated folder whose manifest lacks `session`'s utterances."""
    from components import outputs

    name = f"{validated}-without-session{session}"
    if not (kept / name).is_dir():
        shutil.copytree(kept / validated, kept / f"{name}.part", dirs_exist_ok=True)
        manifest = kept / f"{name}.part" / "manifest.parquet"
        rows = outputs.read_manifest(manifest)
        rows[rows["session"] != session].reset_index(drop=True).to_parquet(manifest)
        (kept / f"{name}.part").rename(kept / name)
    return name


def head_accuracy(model_dir: Path, store, rows: pd.DataFrame) -> dict:
    """For an align model with unimodal heads: each head's own prediction on the test
    utterances, {head: (utt_ids, correct)}; what each modality alone says inside the model,
    beside what the fusion head makes of both."""
    import torch

    from components.outputs import TrainedModel
    from model.data import batch_indices, collate
    from model.serving import load_member

    trained = TrainedModel(model_dir)
    member_dir = trained.member_dirs()[0]
    loaded = load_member(member_dir / trained.MODEL, torch.device("cpu"))
    model = loaded.model.eval()
    examples = store.examples(loaded.inputs, trained.fold(member_dir)["test_ids"], rows)
    labels = np.array([e.label for e in examples])
    predicted = np.zeros((2, len(examples)), dtype=int)
    with torch.no_grad():
        for idx in batch_indices([len(e.frames) for e in examples], 64, None):
            b = collate([examples[i] for i in idx])
            heads = model.outputs(b.frames, b.frame_lengths, b.words, b.word_lengths).unimodal
            if heads is None:
                return {}
            predicted[:, idx] = torch.stack(heads).argmax(-1).numpy()
    ids = [e.utt_id for e in examples]
    return {"speech head": (ids, predicted[0] == labels),
            "text head": (ids, predicted[1] == labels)}


def ours(job: tuple) -> dict:
    folder, kind, fold, seed, overrides, protocol, config_file = job
    config = load_config(config_file, [*recipe(config_file), *overrides, f"model.kind={kind}",
                                       f"seed={seed}",
                                f"protocol={protocol}"])
    name = f"{kind}_{fold}_{seed}"
    with contextlib.redirect_stdout(io.StringIO()):  # the per-epoch lines
        store, rows = train.load_inputs(folder / "store", folder / "validated", config)
        metrics = member.run_member(folds.task_of(rows, config, fold), store, rows, config,
                                    folder / "m" / name, folder / "e" / name)["metrics"]
    table = pd.read_csv(folder / "e" / name / Evaluation.PREDICTIONS)
    heads = head_accuracy(folder / "m" / name, store, rows) if kind == "align" else {}
    return {"who": kind, "fold": fold, "seed": seed, "ua": metrics["ua"], "wa": metrics["wa"],
            "ablation": metrics.get("ablation"), "utt_ids": table["utt_id"].tolist(),
            "correct": (table["label"] == table["predicted"]).to_numpy(),
            "lift": metrics.get("attention_alignment", {}).get("lift"),
            "prior_lift": metrics.get("attention_alignment", {}).get("prior_lift"),
            "heads": heads}


def theirs(job: tuple) -> dict:
    import torch

    folder, kind, fold, seed, protocol = job
    torch.set_num_threads(1)
    r = reference.run_fold(folder / "refstore", folder / "validated", kind, protocol, fold,
                           seed)
    return _as_result(f"ref_{kind}", fold, seed, r)


def _as_result(who: str, fold: str, seed: int, r: dict) -> dict:
    return {"who": who, "fold": fold, "seed": seed, "ua": r["ua"], "wa": r["wa"],
            "ablation": None, "utt_ids": r["utt_ids"], "correct": r["labels"] == r["predicted"],
            "labels": r["labels"], "probabilities": r["probabilities"], "lift": None}


def late_fusion_references(results: list[dict]) -> list[dict]:
    """The reference late fusion: the speech and text references' probabilities averaged
    (the same models, so it costs no training)."""
    by = {(r["who"], r["fold"], r["seed"]): r for r in results}
    fused = []
    for (who, fold, seed), speech in by.items():
        text = by.get(("ref_text", fold, seed))
        if who == "ref_speech" and text is not None:
            probabilities = 0.5 * (speech["probabilities"] + text["probabilities"])
            predicted = probabilities.argmax(1)
            fused.append(_as_result("ref_late_fusion", fold, seed, {
                **reference.scores(speech["labels"], predicted, probabilities.shape[1]),
                "utt_ids": speech["utt_ids"], "labels": speech["labels"],
                "predicted": predicted, "probabilities": probabilities}))
    return fused


def paired(results: list[dict], a: str, b: str) -> str:
    by = {(r["who"], r["fold"], r["seed"]): r["ua"] for r in results}
    keys = sorted((f, s) for w, f, s in by if w == a and (b, f, s) in by)
    if not keys:
        return ""
    d = np.array([by[(a, *k)] - by[(b, *k)] for k in keys])
    p = stats.ttest_rel([by[(a, *k)] for k in keys], [by[(b, *k)] for k in keys]).pvalue \
        if len(keys) > 1 and d.std() > 0 else float("nan")
    return (f"{a:>14} - {b:<14} {d.mean():+.3f} ± {d.std():.3f}  wins {int((d > 0).sum())}/"
            f"{len(d)}  p {p:.3f}")


def seed_spread(results: list[dict]) -> str | None:
    """Each kind's std over seeds within a fold, averaged over the folds: the spread a
    retrain on the same data shows, apart from how the folds differ."""
    folds = sorted({r["fold"] for r in results})
    if len(folds) < 2 or len({r["seed"] for r in results}) < 2:
        return None
    spreads = []
    for who in dict.fromkeys(r["who"] for r in results):
        per_fold = [np.std([r["ua"] for r in results if r["who"] == who and r["fold"] == f])
                    for f in folds]
        spreads.append(f"{who} {np.mean(per_fold):.3f} (max {np.max(per_fold):.3f})")
    return "UA std over seeds within a fold, mean over folds: " + ", ".join(spreads)


def prosody_ceiling(folder: Path, folds: list[str], seeds: list[int]) -> str | None:
    """What the voice alone can tell at best on a TTS corpus: a classifier given the
    generator's own prosody values (rate, pitch, range, amplitude; the speaker's base F0 and
    rate) instead of audio, on the same folds. A context for the speech scores, not a
    model: no audio model can hear these values more exactly than they were set."""
    from sklearn.ensemble import GradientBoostingClassifier

    truth = json.loads((folder / "IEMOCAP_full_release" / sample_corpus.TRUTH_FILENAME)
                       .read_text())
    # On the stressed corpus every delivery is neutral: the label is in which word is
    # stressed, which these utterance-level values do not say.
    if truth.get("stress") or not all("prosody" in u for u in truth["utterances"].values()):
        return None
    kept = pd.read_parquet(folder / "validated" / "manifest.parquet").dropna(subset=["label"])

    def values(row) -> list[float]:
        p, speaker = truth["utterances"][row.utt_id]["prosody"], truth["speakers"][row.speaker]
        return [p["rate"], p["pitch"], p["range"], p["amplitude"], speaker["f0"],
                speaker["rate"]]

    x = np.array([values(r) for r in kept.itertuples()])
    y, cues = kept["label"].to_numpy(), np.array([truth["utterances"][u]["cue"]
                                                  for u in kept["utt_id"]])
    uas, by_cue = [], {c: [] for c in CUES}
    for fold, seed in itertools.product(folds, seeds):
        test = (kept["session"] == int(fold.removeprefix("session"))).to_numpy()
        model = GradientBoostingClassifier(random_state=seed).fit(x[~test], y[~test])
        right = model.predict(x[test]) == y[test]
        uas.append(np.mean([right[y[test] == c].mean() for c in np.unique(y[test])]))
        for c in CUES:
            by_cue[c].append(right[cues[test] == c].mean() if (cues[test] == c).any() else 0)
    return (f"{'prosody ceiling':<16}{np.mean(uas):.3f} ± {np.std(uas):.3f}  {'':>13}   "
            + "  ".join(f"{np.mean(by_cue[c]):7.3f}" for c in CUES)
            + "   (the generator's prosody values, not audio: the best the voice can tell)")


def column_of(utterance: dict) -> str:
    """The report's accuracy column for an utterance of the truth file: its cue, or on the
    stressed corpus whether the stressed word is the first or second emotion word."""
    stress = utterance.get("stress")
    if stress:
        return STRESS_COLUMNS[0] if stress["first"] else STRESS_COLUMNS[1]
    return utterance["cue"]


def accuracy_by(columns, cue: np.ndarray, correct: np.ndarray) -> str:
    """The share right in each column (a cue, or where the stressed word sits), aligned."""
    return "  ".join(f"{correct[cue == c].mean():7.3f}" if (cue == c).any() else f"{'-':>7}"
                     for c in columns)


def report(voice: str, folder: Path, results: list[dict], kinds: list[str]) -> None:
    whole = json.loads((folder / "IEMOCAP_full_release" / sample_corpus.TRUTH_FILENAME)
                       .read_text())
    truth = whole["utterances"]
    columns, by = ((STRESS_COLUMNS, "which emotion word is stressed") if whole.get("stress")
                   else (CUES, "cue"))
    print(f"-- {voice} corpus: UA and WA mean ± std over (fold, seed) models; accuracy by {by}")
    print(f"{'':<16}{'UA':>13}  {'WA':>13}   " + "  ".join(f"{c:>7}" for c in columns))
    for who in dict.fromkeys(r["who"] for r in results):
        mine = [r for r in results if r["who"] == who]
        ua, wa = np.array([r["ua"] for r in mine]), np.array([r["wa"] for r in mine])
        cue = np.concatenate([[column_of(truth[u]) for u in r["utt_ids"]] for r in mine])
        correct = np.concatenate([r["correct"] for r in mine])
        print(f"{who:<16}{ua.mean():.3f} ± {ua.std():.3f}  {wa.mean():.3f} ± {wa.std():.3f}"
              f"   {accuracy_by(columns, cue, correct)}   (n={len(mine)})")
    for head in ("speech head", "text head"):
        mine = [r["heads"][head] for r in results if r.get("heads")]
        if mine:
            cue = np.array([column_of(truth[u]) for ids, _ in mine for u in ids])
            correct = np.concatenate([c for _, c in mine])
            print(f"{'  align: ' + head:<46}   {accuracy_by(columns, cue, correct)}   "
                  "(the head's own prediction, unused by default)")
    ceiling = prosody_ceiling(folder, sorted({r["fold"] for r in results}),
                              sorted({r["seed"] for r in results}))
    if ceiling:
        print(ceiling)
    spread = seed_spread(results)
    if spread:
        print(spread)
    ablations = [r["ablation"] for r in results if r["who"] == "align" and r["ablation"]]
    if ablations:
        print("align ablation (mean UA): " + ", ".join(
            f"{k} {np.mean([a[k] for a in ablations]):.3f}" for k in ablations[0]))
    lifts = [r["lift"] for r in results if r["who"] == "align" and r.get("lift") is not None]
    if lifts:
        priors = [r["prior_lift"] for r in results
                  if r["who"] == "align" and r.get("prior_lift") is not None]
        print(f"align attention lift (mass on a word's own frames / uniform; 1 = none): "
              f"{np.mean(lifts):.2f} ± {np.std(lifts):.2f} (n={len(lifts)})"
              + (f"; the diagonal prior's own weights: {np.mean(priors):.2f}" if priors else ""))
    print("paired UA differences over the same (fold, seed):")
    for other in kinds:
        if other != "align":
            print("  " + paired(results, "align", other))
    for kind in kinds:
        line = paired(results, kind, f"ref_{kind}")
        if line:
            print("  " + line)


def saved_form(voice: str, results: list[dict], settings: list[str]) -> list[dict]:
    return [{"voice": voice, "who": r["who"], "fold": r["fold"], "seed": r["seed"],
             "ua": float(r["ua"]), "wa": float(r["wa"]), "settings": settings}
            for r in results]


def compare_runs(voice: str, results: list[dict], saved: list[dict]) -> None:
    """This run against a saved one, kind by kind: the paired difference over the (fold,
    seed) models both have, and each one's seed spread within a fold."""
    earlier = [{**r, "who": f"{r['who']}@saved"} for r in saved if r["voice"] == voice]
    if not earlier:
        print(f"-- {voice} corpus: the saved run has no models of it")
        return
    print(f"-- {voice} corpus, this run - the saved one "
          f"({' '.join(earlier[0]['settings'])}):")
    for who in dict.fromkeys(r["who"] for r in results):
        line = paired(results + earlier, who, f"{who}@saved")
        if line:
            print("  " + line)
    spread = seed_spread([r for r in earlier if r["who"].removesuffix("@saved") in
                          {x["who"] for x in results}])
    if spread:
        print("  saved run's " + spread)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voices", nargs="+", default=["builtin", "tts"],
                        choices=["builtin", "tts", "stress", "flite"])
    parser.add_argument("--utterances", type=int, default=2000)
    parser.add_argument("--protocol", default="holdout", choices=["holdout", "loso"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--kinds", nargs="+", default=["align", "speech", "text", "late_fusion"])
    parser.add_argument("--references", nargs="*", default=["speech", "text", "late_fusion",
                                                             "align"])
    parser.add_argument("--config", type=Path,
                        help="train ours from this config file (e.g. configs/xu2019.yaml) "
                             "instead of the benchmark's model size; --set goes on top")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="config overrides for our trainings")
    parser.add_argument("--select", action="store_true",
                        help="choose, not test: holdout on session 4 (its two speakers, "
                             "speakers of the test fold's training sessions), session 5 "
                             "left out of every manifest")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache", type=Path,
                        help="keep the corpora and feature stores here and reuse them")
    parser.add_argument("--save", type=Path, help="write every model's UA and WA here (JSON)")
    parser.add_argument("--against", type=Path,
                        help="a file --save wrote: compare this run with it, paired")
    args = parser.parse_args()
    saved = json.loads(args.against.read_text()) if args.against else None
    kept = []
    folds = ["session5"] if args.protocol == "holdout" else [f"session{s}" for s in range(1, 6)]
    if args.select:
        if args.protocol != "holdout":
            parser.error("--select chooses on holdout only")
        folds, args.overrides = ["session4"], [*args.overrides, "holdout_session=4"]
    print(f"{args.utterances} utterances per corpus (corpus seed 3), {args.protocol} "
          f"({len(folds)} folds) x seeds {args.seeds}; ours: "
          f"{args.config or ''} {' '.join(recipe(args.config) + args.overrides)}", flush=True)
    scratch = Path(tempfile.mkdtemp(prefix="emoalign-fusion-"))
    try:
        for voice in args.voices:
            folder = prepare(scratch, voice, args.utterances, args.overrides,
                             args.cache, args.config, 5 if args.select else None)
            cells = list(itertools.product(folds, args.seeds))
            trained = [k for k in args.references if k != "late_fusion"]
            if "late_fusion" in args.references:
                trained = list(dict.fromkeys([*trained, "speech", "text"]))
            # The slowest (frame-level LSTMs) first, so the pool ends together.
            jobs = [(theirs, (folder, k, f, s, args.protocol)) for k in
                    sorted(trained, key=["align", "speech", "text"].index) for f, s in cells]
            jobs += [(ours, (folder, k, f, s, args.overrides, args.protocol, args.config))
                     for k in args.kinds for f, s in cells]
            with ProcessPoolExecutor(args.workers) as pool:
                results = list(pool.map(_call, jobs))
            if "late_fusion" in args.references:
                results += late_fusion_references(results)
            results.sort(key=lambda r: (r["who"].startswith("ref_"), r["who"]))
            report(voice, folder, results, args.kinds)
            if saved is not None:
                compare_runs(voice, results, saved)
            if args.save:
                kept += saved_form(voice, results, [*([str(args.config)] if args.config else []),
                                                    *recipe(args.config), *args.overrides])
                args.save.write_text(json.dumps(kept, indent=1))
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _call(job):
    fn, arguments = job
    return fn(arguments)


if __name__ == "__main__":
    main()
