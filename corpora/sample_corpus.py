"""A synthetic corpus in the exact IEMOCAP layout, the data every test, demo and benchmark uses.

What makes it useful rather than merely well-formed:
- label codes come in IEMOCAP's proportions (at 10,039 utterances, exactly its counts), so the
  4-class mapping, the dropped codes and the VAD values are all exercised;
- the audio is speech-like: each word of the transcript is a time-aligned run of voiced
  syllables (glottal source through vowel formants, noisy consonant onsets), and the
  speaker and the emotion set pitch level and range, loudness, speaking rate and voice
  quality (breathiness, tension, tremor);
- emotion is carried by the voice, by the words, or by both. A share of utterances has
  neutral words (only the voice tells) and a share has neutral delivery (only the words
  tell), so only a model that fuses both modalities can get all of them right;
- or, with `stress` (corpora.stress_plan), every utterance names two emotions and is
  labelled by the one its speaker stresses, so only a model that ties what it hears to the
  word it reads can get them right.

Every utterance draws from its own seeded stream, so the bytes written do not depend on the
number of worker processes or the order in which utterances are synthesised.

The audio is made by a `Renderer`: the built-in synthesiser here by default, or another one
(corpora.tts_corpus speaks the same plan with espeak-ng, corpora.flite_corpus with flite)
through `generate(renderer=...)`.
Planning, annotations, label and transcription files and the truth file do not change with it.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import wave
import zlib
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from components import iemocap
from components.errors import UserError
from corpora import stress_plan
from corpora.stress_plan import StressPlan
from model.spec import SAMPLE_RATE

GENERATOR_VERSION = "1"
TRUTH_FILENAME = iemocap.GENERATED_MARKER
MIN_UTTERANCES = len(iemocap.LABEL_CODES)  # every code at least once
SR = SAMPLE_RATE  # IEMOCAP's, which features take

# ---- what the corpus holds --------------------------------------------------------------

IMPRO_DIALOGS = {
    1: ["impro01", "impro02", "impro03", "impro04", "impro05", "impro06", "impro07"],
    2: ["impro01", "impro02", "impro03", "impro04", "impro05", "impro06", "impro07", "impro08"],
    3: ["impro01", "impro02", "impro03", "impro04", "impro05a", "impro05b", "impro06",
        "impro07", "impro08a", "impro08b"],
    4: ["impro01", "impro02", "impro03", "impro04", "impro05", "impro06", "impro07", "impro08"],
    5: ["impro01", "impro02", "impro03", "impro04", "impro05a", "impro05b", "impro06",
        "impro07", "impro08"],
}
SCRIPT_DIALOGS = ["script01_1", "script01_2", "script01_3", "script02_1", "script02_2",
                  "script03_1", "script03_2"]
UTTERANCES_PER_DIALOG = 60  # the real release averages about 66

NEUTRAL_WORDS = (
    "i you we they it he she the a an to of and but so that this what where when how is are "
    "was were be have has had do did will would can could just maybe think know mean want "
    "need go going get got see look tell said say thing things time day today tomorrow "
    "yesterday home work car house money job people guy okay well yeah right here there now "
    "then about with for from at on in up out back over still something anything everything "
    "someone talk call make take come came put give left thought meeting phone letter office "
    "table door street week morning night dinner lunch paper plan number name idea minute hour "
    "train bus ticket form window coffee sister brother mother father friend school city"
).split()

# Text cues per code. Neighbouring emotions share words, as they do in real speech.
EMOTION_WORDS = {
    "hap": "great wonderful happy love glad lovely delighted beautiful perfect fun enjoy nice "
           "congratulations laugh".split(),
    "exc": "amazing fantastic awesome incredible excited thrilled wow yes love great "
           "wonderful perfect".split(),
    "sad": "sad sorry miss lost alone cry hurt gone lonely unfortunately miserable died broken "
           "empty tired".split(),
    "ang": "angry hate stupid ridiculous furious damn shut idiot unbelievable fault liar "
           "enough outrageous never".split(),
    "fru": "annoying again why never impossible waiting hopeless useless whatever pointless "
           "enough ridiculous".split(),
    "sur": "seriously wow unexpected suddenly believe shocked surprise really".split(),
    "fea": "scared afraid worried danger nervous terrified careful panic".split(),
    "dis": "gross disgusting awful nasty revolting".split(),
}


@dataclass(frozen=True)
class Voice:
    """Multipliers an emotion applies to a speaker's voice."""

    f0: float         # pitch level
    f0_range: float   # pitch excursion, relative
    energy: float     # loudness
    rate: float       # syllables per second
    breath: float     # aspiration noise share
    tension: float    # 0 soft sinusoidal pulses .. 1 sharp, bright pulses
    tremor: float = 0.0


VOICES = {
    "neu": Voice(1.00, 0.12, 1.00, 1.00, 0.15, 0.50),
    "hap": Voice(1.20, 0.34, 1.25, 1.08, 0.10, 0.60),
    "exc": Voice(1.28, 0.42, 1.40, 1.15, 0.08, 0.65),
    "sad": Voice(0.86, 0.06, 0.58, 0.78, 0.42, 0.30),
    "ang": Voice(1.12, 0.28, 1.70, 1.12, 0.05, 0.95),
    "fru": Voice(1.05, 0.20, 1.30, 1.04, 0.12, 0.80),
    "sur": Voice(1.32, 0.50, 1.30, 1.00, 0.10, 0.60),
    "fea": Voice(1.26, 0.24, 0.80, 1.20, 0.30, 0.45, tremor=0.05),
    "dis": Voice(0.92, 0.15, 0.90, 0.85, 0.20, 0.70),
    "oth": Voice(1.04, 0.18, 1.05, 1.00, 0.15, 0.55),
}

# Mean (valence, activation, dominance) on IEMOCAP's 1..5 scales.
VAD = {
    "neu": (3.0, 2.6, 2.8), "hap": (4.0, 3.2, 3.1), "exc": (3.9, 3.6, 3.3),
    "sad": (2.1, 2.2, 2.3), "ang": (1.9, 3.8, 3.9), "fru": (2.0, 3.2, 3.2),
    "sur": (3.3, 3.5, 2.9), "fea": (2.0, 3.3, 2.2), "dis": (1.8, 3.0, 3.2),
    "oth": (2.9, 2.9, 2.9),
}

# Which modality carries the emotion of a non-neutral utterance.
CUE_SHARES = {"both": 0.4, "voice": 0.3, "text": 0.3}

# Vowel formants (F1, F2) of an adult male voice; female voices are scaled up.
VOWELS = [(270, 2290), (390, 1990), (530, 1840), (660, 1720), (730, 1090), (570, 840),
          (440, 1020), (300, 870), (640, 1190)]


@dataclass
class Speaker:
    speaker: str
    gender: str
    f0: float
    formant_scale: float
    rate: float
    breath: float
    gain: float


@dataclass
class UtterancePlan:
    index: int
    utt_id: str
    session: int
    dialog: str
    gender: str
    code: str
    voice_code: str   # the emotion the delivery expresses
    text_code: str    # the emotion the words express
    cue: str          # both | voice | text | neutral | mixed
    text: str
    words: list[str] = field(default_factory=list)  # what is spoken, in order
    stress: StressPlan | None = None  # --stress: which emotion word is stressed, and how


@dataclass
class Rendered:
    index: int
    n_samples: int
    word_spans: list[tuple[float, float, str]]
    info: dict | None = None  # what the renderer wants the truth file to say of the utterance


# ---- planning: codes, dialogs, texts ----------------------------------------------------

def allocate_codes(n: int) -> dict[str, int]:
    """IEMOCAP's code proportions for n utterances; exact at 10,039; every code at least once."""
    if n < len(iemocap.LABEL_CODES):
        raise ValueError(f"a sample corpus needs at least {len(iemocap.LABEL_CODES)} utterances")
    real = iemocap.FULL_RELEASE_CODE_COUNTS
    # Codes too rare for n get one utterance each; the rest share what is left proportionally.
    rare = {c for c, k in real.items() if n * k / iemocap.FULL_RELEASE_UTTERANCES < 1}
    common_total = sum(k for c, k in real.items() if c not in rare)
    left = n - len(rare)
    exact = {c: left * k / common_total for c, k in real.items() if c not in rare}
    counts = {c: int(v) for c, v in exact.items()}
    by_remainder = sorted(exact, key=lambda c: (-(exact[c] - counts[c]), c))
    for c in by_remainder[: left - sum(counts.values())]:
        counts[c] += 1
    counts.update({c: 1 for c in rare})
    return {c: counts[c] for c in iemocap.LABEL_CODES}


def make_speakers(rng: np.random.Generator) -> dict[str, Speaker]:
    speakers = {}
    for session in iemocap.SESSIONS:
        for gender in ("F", "M"):
            base_f0 = 210.0 if gender == "F" else 118.0
            speakers[f"Ses0{session}{gender}"] = Speaker(
                speaker=f"Ses0{session}{gender}",
                gender=gender,
                f0=base_f0 * float(rng.uniform(0.88, 1.12)),
                formant_scale=(1.17 if gender == "F" else 1.0) * float(rng.uniform(0.95, 1.05)),
                rate=float(rng.uniform(0.9, 1.1)),
                breath=float(rng.uniform(0.0, 0.08)),
                gain=float(rng.uniform(0.85, 1.15)),
            )
    return speakers


def session_dialogs(session: int, n_utterances: int) -> list[str]:
    """Dialog names for a session, improvised and scripted interleaved, both leads."""
    names = []
    impro, script = IMPRO_DIALOGS[session], SCRIPT_DIALOGS
    for i in range(max(len(impro), len(script))):
        for pool in (impro, script):
            if i < len(pool):
                names.append(pool[i])
    leads = ("F", "M")
    dialogs = [f"Ses0{session}{leads[i % 2]}_{name}" for i, name in enumerate(names)]
    dialogs += [f"Ses0{session}{leads[(i + 1) % 2]}_{name}" for i, name in enumerate(names)]
    wanted = max(2, min(len(dialogs), math.ceil(n_utterances / UTTERANCES_PER_DIALOG)))
    return dialogs[:wanted]


def _pick(rng: np.random.Generator, items: list[str]) -> str:
    return items[int(rng.integers(len(items)))]


def compose_text(rng: np.random.Generator, text_code: str, n_words: int, excited: bool) -> str:
    """A transcript: neutral words, with one to three cue words when the text carries emotion."""
    words = [_pick(rng, NEUTRAL_WORDS) for _ in range(n_words)]
    if text_code in EMOTION_WORDS:
        n_cues = min(n_words, 1 + int(rng.integers(3)))
        for pos in rng.choice(n_words, size=n_cues, replace=False):
            # Some cue words come from a neighbouring emotion, so text alone stays ambiguous.
            source = text_code if rng.random() > 0.15 else _pick(rng, sorted(EMOTION_WORDS))
            words[int(pos)] = _pick(rng, EMOTION_WORDS[source])
    words = ["I" if w == "i" else w for w in words]
    if n_words >= 4 and rng.random() < 0.04:
        words[0] += ":"  # transcripts contain colons ("Look: I told you.")
    elif n_words >= 6 and rng.random() < 0.2:
        words[int(rng.integers(2, n_words - 2))] += ","
    words[0] = words[0][0].upper() + words[0][1:]
    end = "!" if excited and rng.random() < 0.4 else ("?" if rng.random() < 0.15 else ".")
    text = " ".join(words) + end
    if text_code in ("hap", "exc") and rng.random() < 0.05:
        text += " [LAUGHTER]"
    return text


def spoken_words(text: str) -> list[str]:
    return [w for w in (re.sub(r"[^a-z']", "", t.lower()) for t in text.split()
                        if not t.startswith("[")) if w]


def n_words_for(rng: np.random.Generator) -> int:
    # Lognormal like IEMOCAP's turn lengths: median ~9 words, a long tail to ~75 (about 35 s).
    return int(np.clip(round(rng.lognormal(math.log(8.9), 0.8)), 1, 75))


def choose_modalities(rng: np.random.Generator, code: str) -> tuple[str, str, str]:
    """(voice_code, text_code, cue) for an utterance labelled `code`."""
    if code == "neu":
        return "neu", "neu", "neutral"
    if code == "xxx":
        # No annotator majority: voice and words point different ways.
        a, b = rng.choice(["neu", "hap", "exc", "sad", "ang", "fru"], size=2, replace=False)
        return str(a), str(b), "mixed"
    if code == "oth":
        return "oth", "neu", "voice"
    cue = str(rng.choice(list(CUE_SHARES), p=list(CUE_SHARES.values())))
    return (code if cue != "text" else "neu"), (code if cue != "voice" else "neu"), cue


def script_lines(seed: int, script: str) -> dict[str, list[str]]:
    """A script's fixed lines per emotion: the same words recur wherever the script is acted."""
    rng = np.random.default_rng([seed, zlib.crc32(script.encode())])
    return {code: [compose_text(rng, code, n_words_for(rng), VOICES[code].energy > 1.2)
                   for _ in range(6)]
            for code in ["neu", *EMOTION_WORDS]}


def _content(rng: np.random.Generator, seed: int, scripts: dict, dialog: str, code: str,
             ) -> dict:
    """What one utterance of the ordinary corpus says and how: codes, cue and text."""
    voice_code, text_code, cue = choose_modalities(rng, code)
    script = dialog.split("_", 1)[1]
    if script.startswith("script"):
        base = script.split("_")[0]
        if base not in scripts:
            scripts[base] = script_lines(seed, base)
        pool = scripts[base][text_code if text_code in scripts[base] else "neu"]
        text = _pick(rng, pool)
    else:
        excited = VOICES.get(voice_code, VOICES["neu"]).energy > 1.2
        text = compose_text(rng, text_code, n_words_for(rng), excited)
    return {"voice_code": voice_code, "text_code": text_code, "cue": cue, "text": text}


def _stressed_content(rng: np.random.Generator, code: str) -> dict:
    """What one utterance of a --stress corpus says. The delivery is neutral and the words
    name two classes ("mixed"): only the stressed word tells the label."""
    text, stress = stress_plan.plan_utterance(rng, code)
    return {"voice_code": "neu", "text_code": "mixed", "cue": "stress", "text": text,
            "stress": stress}


def plan_corpus(n: int, seed: int, stress: bool = False,
                ) -> tuple[list[UtterancePlan], dict[str, Speaker], list[dict]]:
    """Decide every utterance (id, codes, words) and the dialogs' unlabelled extra lines.
    `stress`: the four classes in equal shares, each utterance planned by stress_plan."""
    rng = np.random.default_rng([seed, 0])
    speakers = make_speakers(rng)
    allocated = stress_plan.allocate(n) if stress else allocate_codes(n)
    codes = [c for c, k in sorted(allocated.items()) for _ in range(k)]
    codes = [codes[i] for i in rng.permutation(n)]
    per_session = [n // 5 + (1 if s < n % 5 else 0) for s in range(5)]
    plans: list[UtterancePlan] = []
    extras: list[dict] = []
    scripts: dict[str, dict[str, list[str]]] = {}
    for session, n_session in zip(iemocap.SESSIONS, per_session):
        dialogs = session_dialogs(session, n_session)
        sizes = [n_session // len(dialogs) + (1 if i < n_session % len(dialogs) else 0)
                 for i in range(len(dialogs))]
        for dialog, size in zip(dialogs, sizes):
            lead = dialog[5]
            turns = {"F": 0, "M": 0}
            for k in range(size):
                gender = lead if k % 2 == 0 else ("M" if lead == "F" else "F")
                code = codes[len(plans)]
                content = (_stressed_content(rng, code) if stress else
                           _content(rng, seed, scripts, dialog, code))
                utt_id = f"{dialog}_{gender}{turns[gender]:03d}"
                turns[gender] += 1
                plans.append(UtterancePlan(
                    index=len(plans), utt_id=utt_id, session=session, dialog=dialog,
                    gender=gender, code=code, **content,
                    words=spoken_words(content["text"]) or ["mm"],
                ))
            # Real transcriptions hold lines that are no labelled utterance.
            if rng.random() < 0.5:
                extras.append({"dialog": dialog, "after": int(rng.integers(size)),
                               "kind": "speaker", "gender": _pick(rng, ["F", "M"]),
                               "text": _pick(rng, ["[LAUGHTER]", "[BREATHING]", "Mm-hmm."])})
            if rng.random() < 0.5:
                extras.append({"dialog": dialog, "after": int(rng.integers(size)),
                               "kind": "xx", "gender": _pick(rng, ["F", "M"]),
                               "text": _pick(rng, ["Yeah.", "Okay.", "Mm.", "Right: sure."])})
    return plans, speakers, extras


# ---- audio ------------------------------------------------------------------------------

def _resonators(freqs: list[float], bandwidths: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """One filter from a cascade of two-pole resonators, each with unit gain at its peak."""
    b, a = np.array([1.0]), np.array([1.0])
    for f, bw in zip(freqs, bandwidths):
        r = math.exp(-math.pi * bw / SR)
        theta = 2 * math.pi * min(f, SR * 0.45) / SR
        a = np.convolve(a, [1.0, -2 * r * math.cos(theta), r * r])
        b = b * (1 - r) * math.sqrt(1 - 2 * r * math.cos(2 * theta) + r * r)
    return b, a


def _word_shape(word: str) -> list[tuple[int, bool, float, float]]:
    """A word's syllables as (vowel, has_onset, onset_hz, length), fixed by its spelling."""
    h = zlib.crc32(word.encode())
    n_syllables = max(1, min(4, len(re.findall(r"[aeiouy]+", word))))
    shape = []
    for s in range(n_syllables):
        hs = zlib.crc32(f"{word}/{s}".encode()) ^ h
        shape.append((hs % len(VOWELS), (hs >> 4) % 4 != 0, 2500.0 + (hs >> 8) % 3500,
                      0.09 + ((hs >> 16) % 8) * 0.01))
    return shape


def render(plan: UtterancePlan, speaker: Speaker, seed: int) -> tuple[np.ndarray, list]:
    """Synthesise one utterance: int16 samples and (start_s, end_s, word) spans."""
    rng = np.random.default_rng([seed, 1, plan.index])
    voice = VOICES.get(plan.voice_code, VOICES["neu"])
    f0 = speaker.f0 * voice.f0 * (1 + 0.06 * rng.standard_normal())
    f0_range = voice.f0_range * (1 + 0.2 * rng.standard_normal())
    energy = speaker.gain * voice.energy * (1 + 0.12 * rng.standard_normal())
    rate = max(0.5, speaker.rate * voice.rate * (1 + 0.06 * rng.standard_normal()))
    breath = float(np.clip(voice.breath + speaker.breath + 0.03 * rng.standard_normal(), 0, 0.8))
    # The steps below draw from one stream: their order is part of what the seed fixes.
    syllables, spans, n = _lay_out(rng, plan.words, rate)
    source = _glottal_source(rng, plan, voice, spans, n, f0, f0_range, breath)
    out = _articulate(rng, source, syllables, spans, speaker.formant_scale)
    voiced = np.abs(out) > 0
    rms = math.sqrt(float(np.mean(out[voiced] ** 2))) if voiced.any() else 1.0
    out *= 0.05 * energy / rms
    out += 0.0015 * rng.standard_normal(n)  # room noise
    samples = np.clip(np.round(out * 32767), -32768, 32767).astype("<i2")
    return samples, spans


def _lay_out(rng: np.random.Generator, words: list[str], rate: float,
             ) -> tuple[list[tuple], list[tuple[float, float, str]], int]:
    """Syllables in time, as (onset_start, vowel_start, vowel_end, vowel, has_onset, onset_hz,
    word_i); the (start_s, end_s, word) spans; and the utterance's length in samples."""
    t = float(rng.uniform(0.15, 0.35))
    syllables = []
    spans = []
    for wi, word in enumerate(words):
        word_start = t
        for vowel, has_onset, onset_hz, length in _word_shape(word):
            onset = 0.05 / rate if has_onset else 0.0
            vowel_len = length / rate * float(rng.uniform(0.85, 1.15))
            syllables.append((t, t + onset, t + onset + vowel_len, vowel, has_onset, onset_hz, wi))
            t += onset + vowel_len
        spans.append((word_start, t, word))
        t += float(rng.uniform(0.03, 0.09)) / rate
        if wi < len(words) - 1 and rng.random() < 0.06:
            t += float(rng.uniform(0.15, 0.4))  # a pause
    t += float(rng.uniform(0.15, 0.4))
    return syllables, spans, int(round(t * SR))


def _glottal_source(rng: np.random.Generator, plan: UtterancePlan, voice: Voice, spans: list,
                    n: int, f0: float, f0_range: float, breath: float) -> np.ndarray:
    """n samples of the voice before the vocal tract shapes it: pulses and breath noise."""
    time = np.arange(n) / SR
    # Pitch: accents on words, declination across the utterance, tremor for fear.
    centers = np.array([(s + e) / 2 for s, e, _ in spans])
    accents = rng.uniform(-0.5, 1.0, size=len(spans))
    declination = np.linspace(0.3, -0.3, len(spans)) if len(spans) > 1 else np.zeros(1)
    contour = f0 * (1 + f0_range * (accents + declination))
    if plan.voice_code == "sur":
        contour[-1] *= 1 + f0_range  # the question-like final rise
    pitch = np.interp(time, centers, contour)
    if voice.tremor:
        pitch *= 1 + voice.tremor * np.sin(2 * np.pi * 6.0 * time)
    pitch = np.clip(pitch, 60.0, 500.0)
    phase = np.cumsum(pitch / SR)
    saw = 1.0 - 2.0 * (phase % 1.0)
    tension = voice.tension
    source = tension * saw + (1 - tension) * np.sin(2 * np.pi * phase)
    source += breath * rng.standard_normal(n)
    return source


def _articulate(rng: np.random.Generator, source: np.ndarray, syllables: list[tuple],
                spans: list, scale: float) -> np.ndarray:
    """The source through each syllable's vowel formants, with noise bursts for onsets."""
    # Here, not at the top: scipy.signal takes most of a second to import, and the register
    # step and the CLI import this module for its constants alone.
    from scipy.signal import lfilter

    n = len(source)
    out = np.zeros(n)
    noise = rng.standard_normal(n)
    word_gain = rng.uniform(0.75, 1.0, size=len(spans))
    for onset_start, vowel_start, vowel_end, vowel, has_onset, onset_hz, wi in syllables:
        a, b = int(vowel_start * SR), int(vowel_end * SR)
        if b - a < 8:
            continue
        f1, f2 = VOWELS[vowel]
        num, den = _resonators([f1 * scale, f2 * scale, 2500 * scale], [80, 100, 150])
        seg = lfilter(num, den, source[a:b])
        # Narrow formant filters pass little of the source: level each vowel to unit RMS so
        # loudness comes from the voice settings and word gains, not from the vowel drawn.
        seg /= math.sqrt(float(np.mean(seg * seg))) + 1e-9
        ramp = min(240, (b - a) // 2)
        envelope = np.ones(b - a)
        envelope[:ramp] = np.linspace(0, 1, ramp)
        envelope[-ramp:] = np.linspace(1, 0, ramp)
        out[a:b] += seg * envelope * word_gain[wi]
        if has_onset:
            c = int(onset_start * SR)
            if a - c >= 8:
                num, den = _resonators([onset_hz], [900])
                burst = lfilter(num, den, noise[c:a])
                burst *= np.hanning(a - c) / (math.sqrt(float(np.mean(burst * burst))) + 1e-9)
                out[c:a] += 0.3 * burst * word_gain[wi]
    return out


class Renderer:
    """Turns a planned utterance into audio. This one is the built-in synthesiser; subclasses
    (corpora.tts_corpus, corpora.flite_corpus) plug into generate(). Instances travel to
    worker processes, so they hold plain values only."""

    # Whether it speaks a plan's stressed word (UtterancePlan.stress) with emphasis. The
    # built-in voice does not: its words are hashed vowel runs, not words a listener knows,
    # so a stressed corpus spoken by it would not be the task that corpus poses.
    speaks_stress = False

    def __call__(self, plan: UtterancePlan, speaker: Speaker, seed: int,
                 ) -> tuple[np.ndarray, list[tuple[float, float, str]], dict | None]:
        """int16 samples at SR, the (start_s, end_s, word) span of every spoken word, and what
        the truth file should record of the utterance (None: nothing)."""
        samples, spans = render(plan, speaker, seed)
        return samples, spans, None

    def describe(self, truth: dict, plans: list[UtterancePlan], rendered: list[Rendered],
                 ) -> None:
        """Add to the truth file what it should say about this renderer."""


def write_wav(path: Path, samples: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(samples.tobytes())


def _render_batch(args: tuple) -> list[Rendered]:
    plans, speakers, seed, root, with_wdseg, renderer = args
    done = []
    for plan in plans:
        samples, spans, info = renderer(plan, speakers[f"Ses0{plan.session}{plan.gender}"], seed)
        session_dir = root / f"Session{plan.session}"
        wav_path = iemocap.wav_dir(session_dir) / plan.dialog / f"{plan.utt_id}.wav"
        write_wav(wav_path, samples)
        if with_wdseg:
            frames = [(0, max(0, int(spans[0][0] * 100) - 1), "<s>")]
            for s, e, w in spans:
                frames.append((int(s * 100), max(int(s * 100), int(e * 100) - 1), w.upper()))
            frames.append((int(spans[-1][1] * 100), len(samples) // 160, "</s>"))
            wdseg = iemocap.wdseg_dir(session_dir) / plan.dialog / f"{plan.utt_id}.wdseg"
            wdseg.write_text(iemocap.format_wdseg(frames, plan.index))
        done.append(Rendered(plan.index, len(samples), spans, info))
    return done


# ---- annotations ------------------------------------------------------------------------

def _annotations(rng: np.random.Generator, plan: UtterancePlan) -> tuple[list[str], tuple]:
    """Evaluator lines and the mean VAD, consistent with the consensus code."""
    categories = list(iemocap.CODE_TO_CATEGORY.values())
    if plan.code == "xxx":
        picks = [str(c) for c in rng.choice(categories, size=3, replace=False)]
    else:
        name = iemocap.CODE_TO_CATEGORY[plan.code]
        picks = [name, name, name if rng.random() < 0.6 else _pick(rng, categories)]
    evaluators = sorted(rng.choice(6, size=3, replace=False) + 1)
    lines = [f"C-E{e}:\t{p};\t()" for e, p in zip(evaluators, picks)]
    self_eval = f"C-{plan.gender}1"
    if rng.random() < 0.5:
        lines.append(f"{self_eval}:\t{picks[0]};\t()")
    mean = VAD.get(plan.code if plan.code != "xxx" else plan.voice_code, VAD["neu"])
    ratings = []
    for e in evaluators[:2]:
        vad = [int(np.clip(round(m + rng.normal(0, 0.6)), 1, 5)) for m in mean]
        ratings.append(vad)
        note = "" if rng.random() < 0.9 else "couldn't see"
        lines.append(f"A-E{e}:\tval {vad[0]}; act {vad[1]}; dom  {vad[2]};\t({note})")
    return lines, tuple(float(np.mean([r[i] for r in ratings])) for i in range(3))


# ---- the whole corpus -------------------------------------------------------------------

def generate(out_dir: Path, utterances: int = 600, seed: int = 0, workers: int = 1,
             wdseg: bool = True, renderer: Renderer | None = None, stress: bool = False,
             ) -> dict:
    """Write the corpus under out_dir (the release root) and return its ground truth.
    `stress`: the corpus whose labels are which emotion word is stressed (stress_plan)."""
    renderer = renderer or Renderer()
    check_stress(renderer, stress)
    plans, speakers, extras = plan_corpus(utterances, seed, stress)
    out_dir.mkdir(parents=True, exist_ok=True)
    for plan in plans:
        session_dir = out_dir / f"Session{plan.session}"
        (iemocap.wav_dir(session_dir) / plan.dialog).mkdir(parents=True, exist_ok=True)
        if wdseg:
            (iemocap.wdseg_dir(session_dir) / plan.dialog).mkdir(parents=True, exist_ok=True)
        iemocap.label_dir(session_dir).mkdir(parents=True, exist_ok=True)
        iemocap.transcript_dir(session_dir).mkdir(parents=True, exist_ok=True)

    batch = 32
    jobs = [(plans[i:i + batch], speakers, seed, out_dir, wdseg, renderer)
            for i in range(0, len(plans), batch)]
    rendered: list[Rendered] = []
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for part in pool.map(_render_batch, jobs):
                rendered.extend(part)
    else:
        for job in jobs:
            rendered.extend(_render_batch(job))
    rendered.sort(key=lambda r: r.index)

    truth = _write_dialog_files(out_dir, plans, rendered, extras, seed)
    truth.update(seed=seed, n_utterances=utterances, wdseg=wdseg, speakers={
        k: asdict(v) for k, v in speakers.items()})
    renderer.describe(truth, plans, rendered)
    if stress:
        # Only a stressed corpus says so: the ordinary corpora's bytes stay as they were.
        truth["generator"] += " --stress"
        truth.update(stress=True, stress_plan=stress_plan.describe())
    (out_dir / TRUTH_FILENAME).write_text(json.dumps(truth, indent=1, sort_keys=True) + "\n")
    return truth


def check_stress(renderer: Renderer, stress: bool) -> None:
    if stress and not renderer.speaks_stress:
        raise UserError("--stress needs --voice tts: only espeak-ng speaks a stressed word")


def write(out: Path, utterances: int, seed: int, workers: int = 1, wdseg: bool = True,
          force: bool = False, renderer: Renderer | None = None, stress: bool = False) -> dict:
    """generate() into `out`, a folder that must be empty or (with `force`) hold a sample
    corpus, which is replaced; return the ground truth. Anything else there is never deleted."""
    out = Path(out)
    check_stress(renderer or Renderer(), stress)  # before anything is touched
    if stress and utterances < len(stress_plan.CODES):
        raise UserError(f"--utterances must be at least {len(stress_plan.CODES)} with --stress "
                        f"(one per class), got {utterances}")
    if not stress and utterances < MIN_UTTERANCES:
        raise UserError(f"--utterances must be at least {MIN_UTTERANCES} (one per IEMOCAP code), "
                        f"got {utterances}")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise UserError(f"{out} is not empty; pass --force to replace a sample corpus there")
        if not (out / TRUTH_FILENAME).is_file():
            raise UserError(f"{out} is not a generated sample corpus; refusing to delete it")
        shutil.rmtree(out)
    return generate(out, utterances, seed, workers=workers, wdseg=wdseg, renderer=renderer,
                    stress=stress)


def _write_dialog_files(out_dir: Path, plans: list[UtterancePlan], rendered: list[Rendered],
                        extras: list[dict], seed: int) -> dict:
    """Write each dialog's label file and transcription; return the corpus' ground truth."""
    rng = np.random.default_rng([seed, 2])
    by_dialog: dict[str, list[UtterancePlan]] = {}
    for plan in plans:
        by_dialog.setdefault(plan.dialog, []).append(plan)
    extras_after: dict[tuple[str, int], list[dict]] = {}
    for extra in extras:
        extras_after.setdefault((extra["dialog"], extra["after"]), []).append(extra)
    extra_lines = 0
    total_seconds = 0.0
    for dialog, dialog_plans in by_dialog.items():
        for plan in dialog_plans:
            total_seconds += rendered[plan.index].n_samples / SR
        labels, transcript, n_extra = _dialog_files(rng, dialog, dialog_plans, rendered,
                                                    extras_after)
        extra_lines += n_extra
        session_dir = out_dir / f"Session{dialog_plans[0].session}"
        (iemocap.label_dir(session_dir) / f"{dialog}.txt").write_text(labels)
        (iemocap.transcript_dir(session_dir) / f"{dialog}.txt").write_text(transcript)
    return _truth(plans, total_seconds, extra_lines)


def _dialog_files(rng: np.random.Generator, dialog: str, dialog_plans: list[UtterancePlan],
                  rendered: list[Rendered], extras_after: dict[tuple[str, int], list[dict]],
                  ) -> tuple[str, str, int]:
    """One dialog's label file and transcription, and how many lines of the transcription
    are no labelled utterance."""
    labels = [iemocap.LABEL_FILE_HEADER]
    transcript = []
    n_extra = 0
    t = float(rng.uniform(2.0, 8.0))
    xx_turns = {"F": 0, "M": 0}
    for k, plan in enumerate(dialog_plans):
        seconds = rendered[plan.index].n_samples / SR
        start, end = round(t, 4), round(t + seconds, 4)
        annotator_lines, vad = _annotations(rng, plan)
        block = iemocap.LabelBlock(plan.utt_id, start, end, plan.code, *vad)
        labels.append(iemocap.format_label_header(block))
        labels.extend(line + "\n" for line in annotator_lines)
        labels.append("\n")
        transcript.append(iemocap.format_transcript_line(plan.utt_id, start, end, plan.text))
        t = end + float(rng.uniform(0.2, 2.5))
        for extra in extras_after.get((dialog, k), []):
            n_extra += 1
            if extra["kind"] == "speaker":
                transcript.append(f"{extra['gender']}: {extra['text']}\n")
            else:
                g = extra["gender"]
                xx_id = f"{dialog}_{g}XX{xx_turns[g]}"
                xx_turns[g] += 1
                transcript.append(iemocap.format_transcript_line(
                    xx_id, round(t, 4), round(t + 0.6, 4), extra["text"]))
                t += 0.8
    return "".join(labels), "".join(transcript), n_extra


def _truth(plans: list[UtterancePlan], total_seconds: float, extra_lines: int) -> dict:
    """What the corpus holds, for tests to compare ingest with (generate() adds the settings)."""
    class_of = {"neu": "neutral", "hap": "happy", "exc": "happy", "ang": "angry", "sad": "sad"}
    return {
        "generator": f"emoalign sample-corpus v{GENERATOR_VERSION}",
        "sample_rate": SR,
        "total_audio_seconds": round(total_seconds, 3),
        "non_utterance_lines": extra_lines,
        "counts": {
            "code": dict(sorted(Counter(p.code for p in plans).items())),
            "session": {str(s): sum(p.session == s for p in plans) for s in iemocap.SESSIONS},
            "code_by_session": {
                str(s): dict(sorted(Counter(p.code for p in plans if p.session == s).items()))
                for s in iemocap.SESSIONS},
            "class4": dict(sorted(Counter(class_of[p.code] for p in plans
                                          if p.code in class_of).items())),
            "cue": dict(sorted(Counter(p.cue for p in plans).items())),
        },
        "utterances": {p.utt_id: _utterance_truth(p) for p in plans},
    }


def _utterance_truth(plan: UtterancePlan) -> dict:
    truth = {"code": plan.code, "voice": plan.voice_code, "text": plan.text_code, "cue": plan.cue}
    if plan.stress:
        truth["stress"] = plan.stress.truth()
    return truth


def default_workers() -> int:
    return max(1, min(4, len(os.sched_getaffinity(0))))
