"""How much a joint model can lead late fusion at best, on the espeak-ng and flite corpora:
the Bayes-optimal joint rule against the mean of the best speech-only and text-only
posteriors, computed from the generator's own distributions instead of trained models.

    .venv/bin/python benchmarks/fusion_bound.py [--utterances 40000] [--corpus-seeds 3 4]
        [--voice-noise 1 1.5 2] [--text-training 1600 all]

Both corpora share one plan (corpora/sample_corpus.py): an emotional utterance carries its
class in the voice, the words or both (CUE_SHARES), a neutral one in neither. The voice's
delivery is the emotion's PROSODY shifted by JITTER (corpora/tts_corpus.py): Gaussian in
(log rate, pitch points, log range, log loudness) around the voice code's values, so
p(delivery | voice code) is exact here, and it is the speaker-normalised delivery, which
no audio model hears more exactly; `--voice-noise` widens it, as hearing it from audio
does. p(words | text code) is a logistic regression on the words of planned transcripts
(`--text-training` of them, or every one outside session 5: what 2000-utterance corpora
teach against what the generator's vocabulary allows). Then, on session 5's planned
utterances of the four classes:
- late fusion (the mean): p(class | delivery) and p(class | words), each exact for its
  modality under the plan, averaged, as LateFusion averages its two models;
- joint: p(class | delivery, words) over the cues, exact under the plan, the best any model
  of both modalities can do with these two pieces of evidence.
UA and accuracy by cue are printed for both, and the joint rule's lead in UA. A bound from
the generator's plan, not a measurement of trained models: it backs "Why a joint model has
little to gain on these corpora" in benchmarks/RESULTS.md.
"""

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from scipy.stats import norm  # noqa: E402
from sklearn.feature_extraction.text import CountVectorizer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

from components.config import IngestConfig  # noqa: E402
from corpora import sample_corpus  # noqa: E402
from corpora.tts_corpus import JITTER, PROSODY  # noqa: E402

CUES = ("both", "voice", "text", "neutral")
TEST_SESSION = 5


def delivery_mean(voice_code: str) -> np.ndarray:
    p = PROSODY.get(voice_code, PROSODY["neu"])
    return np.array([math.log(p.rate), p.pitch, math.log(p.range), math.log(p.loudness)])


def routes(code: str) -> list[tuple[str, str, float]]:
    """(voice code, text code, probability) of each way an utterance of `code` is planned
    (sample_corpus.choose_modalities)."""
    if code == "neu":
        return [("neu", "neu", 1.0)]
    return [(code if cue != "text" else "neu", code if cue != "voice" else "neu", share)
            for cue, share in sample_corpus.CUE_SHARES.items()]


def bound(utterances: int, corpus_seed: int, voice_noise: float, text_training: int | None
          ) -> dict:
    """UA and accuracy by cue of the mean rule and the joint rule on one planned corpus."""
    plans, _, _ = sample_corpus.plan_corpus(utterances, corpus_seed)
    label_map = IngestConfig().label_map()  # the four classes, excited counted as happy
    classes = sorted(set(label_map.values()))
    spread = voice_noise * np.array([JITTER.rate, JITTER.pitch, JITTER.range, JITTER.loudness])
    rng = np.random.default_rng([corpus_seed, 5])
    delivery = np.array([delivery_mean(p.voice_code) + spread * rng.standard_normal(4)
                         for p in plans])
    codes = np.array([p.code for p in plans])
    text_codes = np.array([p.text_code for p in plans])
    sessions = np.array([p.session for p in plans])
    words = CountVectorizer(token_pattern=r"[a-z']+").fit_transform([p.text for p in plans])

    # p(words | text code), up to a factor the same for every code: posterior over prior.
    taught = np.flatnonzero(sessions != TEST_SESSION)[:text_training]
    text_model = LogisticRegression(C=3.0, max_iter=5000).fit(words[taught], text_codes[taught])
    test = (sessions == TEST_SESSION) & np.isin(codes, list(label_map))
    text_posterior = text_model.predict_proba(words[test])
    text_likelihood = {code: text_posterior[:, k] / np.mean(text_codes[taught] == code)
                       for k, code in enumerate(text_model.classes_)}
    voice_likelihood = {code: np.prod(norm.pdf(delivery[test], delivery_mean(code), spread),
                                      axis=1) for code in {p.voice_code for p in plans}}
    code_prior = {c: np.mean(codes[sessions != TEST_SESSION] == c) for c in label_map}

    def posterior(voice: bool, text: bool) -> np.ndarray:
        mass = np.zeros((test.sum(), len(classes)))
        for code, name in label_map.items():
            for voice_code, text_code, share in routes(code):
                mass[:, classes.index(name)] += (
                    code_prior[code] * share * (voice_likelihood[voice_code] if voice else 1)
                    * (text_likelihood[text_code] if text else 1))
        return mass / mass.sum(1, keepdims=True)

    truth = np.array([classes.index(label_map[c]) for c in codes[test]])
    cues = np.array([p.cue for p in plans])[test]
    rules = {"late fusion (mean)": (posterior(True, False) + posterior(False, True)) / 2,
             "joint": posterior(True, True)}
    out = {}
    for name, probabilities in rules.items():
        right = probabilities.argmax(1) == truth
        out[name] = {"ua": float(np.mean([right[truth == k].mean()
                                           for k in range(len(classes))])),
                     **{cue: float(right[cues == cue].mean()) for cue in CUES}}
    out["n"] = int(test.sum())
    return out


def mean(rows: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--utterances", type=int, default=40000)
    parser.add_argument("--corpus-seeds", type=int, nargs="+", default=[3, 4])
    parser.add_argument("--voice-noise", type=float, nargs="+", default=[1.0, 1.5, 2.0])
    parser.add_argument("--text-training", nargs="+", default=["1600", "all"])
    args = parser.parse_args()
    print(f"{args.utterances} planned utterances per corpus seed; session {TEST_SESSION} "
          f"scored; UA mean over corpus seeds {args.corpus_seeds}")
    print(f"{'voice noise':>11} {'text taught':>11}  {'late fusion':>11}  {'joint':>6}  "
          f"{'lead':>6}   " + "  ".join(f"{c + ', late / joint':>22}" for c in CUES))
    for voice_noise in args.voice_noise:
        for text_training in args.text_training:
            runs = [bound(args.utterances, seed, voice_noise,
                          None if text_training == "all" else int(text_training))
                    for seed in args.corpus_seeds]
            late = [r["late fusion (mean)"] for r in runs]
            joint = [r["joint"] for r in runs]
            leads = [j["ua"] - lf["ua"] for j, lf in zip(joint, late)]
            print(f"{voice_noise:>11g} {text_training:>11}  {mean(late, 'ua'):11.3f}  "
                  f"{mean(joint, 'ua'):6.3f}  {np.mean(leads):+6.3f}   "
                  + "  ".join(f"{mean(late, c):>14.3f} / {mean(joint, c):.3f}"
                                         for c in CUES))


if __name__ == "__main__":
    main()
