"""`emoalign sample-corpus --voice tts`: the sample corpus spoken by a real synthesiser.

corpora.sample_corpus plans the corpus (codes, dialogs, speakers, words, and which
modality carries the emotion) and writes every file; this module only makes the audio, with
espeak-ng:
- each of the ten speakers has its own espeak-ng voice (a dialect plus a female or male
  variant) and its own base pitch, rate and loudness, taken from the plan's speaker;
- the emotion of the delivery (plan.voice_code, "neu" when only the words carry the emotion)
  shifts speaking rate, pitch level, pitch range and loudness, each with per-utterance
  jitter wide enough that every cue's distributions overlap between emotions;
- every word is its own chunk of speech: one espeak-ng call per utterance speaks the words
  with long breaks between them, the chunks are cut apart at those silences and laid end to
  end with short pauses, so each word's .wdseg span is exactly where its sound is;
- a light synthetic reverb and coloured room noise at a per-utterance SNR go on top;
- with `--stress` (corpora.stress_plan) the delivery is neutral except on one planned
  word, spoken louder (-a), higher (-p) and slower (-s) by the plan's emphasis.
Every random draw comes from the utterance's own seeded stream and espeak-ng is
deterministic, so a seed gives the same bytes whatever the number of workers.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass

import numpy as np
from scipy.fft import irfft, next_fast_len, rfft, rfftfreq
from scipy.signal import fftconvolve, resample_poly

from corpora import sample_corpus
from components.errors import UserError
from corpora.sample_corpus import SR, Rendered, Renderer, Speaker, UtterancePlan
from corpora.stress_plan import StressPlan

ESPEAK = "espeak-ng"
ESPEAK_SR = 22_050  # what espeak-ng writes; 16_000 / 22_050 = 320 / 441
INSTALL_HINT = "install it with `apt-get install espeak-ng`"
TTS_VERSION = "1"

# A dialect and a variant per speaker, so no two speakers sound alike.
SPEAKER_VOICES = {
    "Ses01F": "en-us+f1", "Ses01M": "en-us+m1",
    "Ses02F": "en+f2", "Ses02M": "en+m3",
    "Ses03F": "en-gb-x-rp+f3", "Ses03M": "en-gb-x-rp+m2",
    "Ses04F": "en-us+f4", "Ses04M": "en-us+m7",
    "Ses05F": "en+f5", "Ses05M": "en+m6",
}
BASE_RATE = 190.0       # words per minute (espeak-ng -s), times the speaker's rate
BASE_AMPLITUDE = 70.0   # espeak-ng -a (0..200), times the speaker's gain
OUTPUT_GAIN = 0.7       # headroom for reverb and noise on top of espeak-ng's full scale


@dataclass(frozen=True)
class Prosody:
    """How an emotion shifts a speaker's neutral delivery."""

    rate: float      # speaking-rate multiplier
    pitch: float     # added to espeak-ng's pitch (-p, 0..99; the speaker's base is 38..62)
    range: float     # pitch-range multiplier (SSML <prosody range>, 1 = the voice's own)
    loudness: float  # amplitude multiplier (-a)


PROSODY = {
    "neu": Prosody(1.00, 0.0, 1.00, 1.00),
    "hap": Prosody(1.08, 9.0, 1.30, 1.20),
    "exc": Prosody(1.15, 12.0, 1.45, 1.30),
    "sad": Prosody(0.85, -9.0, 0.70, 0.70),
    "ang": Prosody(1.10, 6.0, 1.30, 1.40),
    "fru": Prosody(1.04, 3.0, 1.15, 1.25),
    "sur": Prosody(1.00, 14.0, 1.60, 1.20),
    "fea": Prosody(1.15, 11.0, 1.10, 0.80),
    "dis": Prosody(0.90, -5.0, 0.90, 0.95),
    "oth": Prosody(1.00, 2.0, 1.10, 1.05),
}
# Per-utterance spread: log-normal for the multipliers, normal for pitch. Wide enough that,
# with the speakers' own spread, every cue's distributions overlap between the emotions of
# the 4-class set (a tenth of the lower one reaches past a tenth of the higher one).
JITTER = Prosody(rate=0.12, pitch=6.0, range=0.3, loudness=0.3)
LIMITS = {"rate": (90, 400), "pitch": (0, 99), "range": (20, 250), "amplitude": (10, 160)}
ROOM = {"snr_db": (12.0, 35.0), "noise_colour": (0.0, 2.0), "rt60_s": (0.15, 0.45),
        "reverb": (0.05, 0.3)}

# Cutting one espeak-ng output into words: a word's own silences (stop closures) last well
# under 0.5 s even at the slowest rate, the breaks put between words 2 s.
BREAK_MS = 2000
MIN_BREAK_S = 0.8
FRAME = 110            # 5 ms at 22,050 Hz
QUIET_RMS = 4.0        # int16 units: about -78 dBFS


def espeak_version() -> tuple[str, str]:
    """(path of espeak-ng, its version); UserError when it is missing or does not run."""
    path = shutil.which(ESPEAK)
    if path is None:
        raise UserError(f"--voice tts needs espeak-ng, which is not installed (not on PATH); "
                        f"{INSTALL_HINT}")
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except OSError as e:
        raise UserError(f"espeak-ng at {path} does not run ({e}); {INSTALL_HINT}") from None
    m = re.search(r"text-to-speech:\s*(\S+)", done.stdout)
    if done.returncode != 0 or not m:
        raise UserError(f"espeak-ng at {path} does not run as expected; {INSTALL_HINT}")
    return path, m.group(1)


@dataclass(frozen=True)
class SpeakerVoice:
    voice: str
    pitch: float      # espeak-ng -p before the emotion's shift
    rate: float       # words per minute
    amplitude: float


def speaker_voice(speaker: Speaker) -> SpeakerVoice:
    """The speaker's voice, fixed for the corpus: a table entry plus the plan's draws."""
    base_f0 = 210.0 if speaker.gender == "F" else 118.0  # as sample_corpus.make_speakers
    return SpeakerVoice(
        voice=SPEAKER_VOICES[speaker.speaker],
        pitch=50.0 + 100.0 * (speaker.f0 / base_f0 - 1.0),  # 38..62
        rate=BASE_RATE * speaker.rate,
        amplitude=BASE_AMPLITUDE * speaker.gain,
    )


def draw_delivery(rng: np.random.Generator, voice: SpeakerVoice, voice_code: str) -> dict:
    """espeak-ng settings for one utterance: the speaker's voice, shifted by the emotion,
    jittered. Always four draws from rng, whatever the emotion."""
    p = PROSODY.get(voice_code, PROSODY["neu"])
    z = rng.standard_normal(4)
    return {
        "voice": voice.voice,
        "rate": bounded("rate", voice.rate * p.rate * math.exp(JITTER.rate * z[0])),
        "pitch": bounded("pitch", voice.pitch + p.pitch + JITTER.pitch * z[1]),
        "range": bounded("range", 100 * p.range * math.exp(JITTER.range * z[2])),
        "amplitude": bounded("amplitude",
                             voice.amplitude * p.loudness * math.exp(JITTER.loudness * z[3])),
    }


def bounded(key: str, value: float) -> int:
    lo, hi = LIMITS[key]
    return int(np.clip(round(value), lo, hi))


def stressed_delivery(delivery: dict, stress: StressPlan) -> dict:
    """The utterance's delivery with the plan's emphasis on top. The pitch raise is relative,
    in the points speaker_voice uses (one -p point per 1 % of the speaker's F0)."""
    return {**delivery,
            "rate": bounded("rate", delivery["rate"] * stress.rate),
            "pitch": bounded("pitch", delivery["pitch"] + 100.0 * stress.pitch),
            "amplitude": bounded("amplitude", delivery["amplitude"] * stress.loudness)}


def _espeak(binary: str, delivery: dict, words: list[str]) -> np.ndarray:
    """espeak-ng's int16 samples (at ESPEAK_SR) for `words`, a long break between each two."""
    gap = f' <break time="{BREAK_MS}ms"/> '
    ssml = f'<speak><prosody range="{delivery["range"]}%">{gap.join(words)}</prosody></speak>'
    cmd = [binary, "-v", delivery["voice"], "-s", str(delivery["rate"]),
           "-p", str(delivery["pitch"]), "-a", str(delivery["amplitude"]),
           "-z", "-m", "--stdout", ssml]
    done = subprocess.run(cmd, capture_output=True, timeout=120)
    out = done.stdout
    if done.returncode != 0 or out[:4] != b"RIFF" or out.find(b"data", 12) < 0:
        said = (done.stderr or out[:200]).decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"espeak-ng -v {delivery['voice']} failed"
                           f"{': ' + said[0] if said else ''}")
    rate = int.from_bytes(out[24:28], "little")
    if rate != ESPEAK_SR:
        raise RuntimeError(f"espeak-ng wrote {rate} Hz audio, expected {ESPEAK_SR}")
    data = out[out.find(b"data", 12) + 8:]
    return np.frombuffer(data[: len(data) // 2 * 2], "<i2")


def _sounding(x: np.ndarray) -> list[tuple[int, int]]:
    """(first, last + 1) sample of each stretch of sound, stretches split by >= MIN_BREAK_S
    of silence; frame-exact (5 ms)."""
    n = -(-len(x) // FRAME)
    frames = np.zeros(n * FRAME)
    frames[: len(x)] = x
    rms = np.sqrt(np.mean(frames.reshape(n, FRAME) ** 2, axis=1))
    loud = np.flatnonzero(rms >= QUIET_RMS)
    if not len(loud):
        return []
    split = np.flatnonzero(np.diff(loud) > MIN_BREAK_S * ESPEAK_SR / FRAME)
    firsts = np.r_[loud[0], loud[split + 1]]
    lasts = np.r_[loud[split], loud[-1]]
    return [(int(a) * FRAME, min(len(x), (int(b) + 1) * FRAME)) for a, b in zip(firsts, lasts)]


def speak_words(binary: str, delivery: dict, words: list[str]) -> tuple[list[np.ndarray], str]:
    """One chunk of espeak-ng audio per word, and how they were made: "utterance" (one call,
    cut at the breaks) or "word" (one call per word, when the cut did not give one chunk per
    word)."""
    x = _espeak(binary, delivery, words)
    stretches = _sounding(x)
    if len(stretches) == len(words):
        return [x[a:b] for a, b in stretches], "utterance"
    chunks = []
    for word in words:
        y = _espeak(binary, delivery, [word])
        stretches = _sounding(y)
        if not stretches:
            raise RuntimeError(f"espeak-ng made no sound for {word!r}")
        chunks.append(y[stretches[0][0]: stretches[-1][1]])
    return chunks, "word"


def _coloured_noise(rng: np.random.Generator, n: int, colour: float) -> np.ndarray:
    """Unit-RMS noise whose power falls as 1/f**colour (0 white, 1 pink, 2 brown)."""
    m = next_fast_len(n, real=True)  # FFTs of awkward lengths take 10x longer
    spectrum = rfft(rng.standard_normal(m))
    spectrum *= np.maximum(rfftfreq(m, 1 / SR), 20.0) ** (-colour / 2)
    noise = irfft(spectrum, m)[:n]
    return noise / (math.sqrt(float(np.mean(noise ** 2))) + 1e-12)


class TtsRenderer(Renderer):
    """sample_corpus's plan spoken by espeak-ng. Construction checks espeak-ng is there."""

    speaks_stress = True

    def __init__(self, room: bool = True):
        self.binary, self.version = espeak_version()
        self.room = room  # False: no reverb, no noise (the dry speech, for checks)
        for voice in sorted(set(SPEAKER_VOICES.values())):
            try:
                _espeak(self.binary, {"voice": voice, "rate": 175, "pitch": 50,
                                      "amplitude": 100, "range": 100}, ["ok"])
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
                raise UserError(f"espeak-ng {self.version} at {self.binary} cannot speak "
                                f"({e}); {INSTALL_HINT}") from None

    def __call__(self, plan: UtterancePlan, speaker: Speaker, seed: int,
                 ) -> tuple[np.ndarray, list[tuple[float, float, str]], dict]:
        # A stream of its own, apart from the built-in synthesiser's [seed, 1, index].
        rng = np.random.default_rng([seed, 4, plan.index])
        delivery = draw_delivery(rng, speaker_voice(speaker), plan.voice_code)
        room = {key: float(rng.uniform(lo, hi)) for key, (lo, hi) in ROOM.items()}
        chunks, cut = speak_words(self.binary, delivery, plan.words)
        stressed = None
        if plan.stress:
            # The whole utterance again with the emphasis, keeping only the stressed word: it
            # is then the same word in the same place of the same clause, and differs from
            # its unstressed self by loudness, pitch and rate alone.
            stressed = stressed_delivery(delivery, plan.stress)
            loud, stressed_cut = speak_words(self.binary, stressed, plan.words)
            chunks[plan.stress.index] = loud[plan.stress.index]
            stressed["cut"] = stressed_cut

        # Words end to end at 22,050 Hz: short pauses, now and then a longer one.
        tempo = BASE_RATE / delivery["rate"]
        starts, t = [], float(rng.uniform(0.15, 0.35))
        for i, chunk in enumerate(chunks):
            if i:
                t += float(rng.uniform(0.05, 0.14)) * tempo
                if rng.random() < 0.06:
                    t += float(rng.uniform(0.15, 0.4))
            starts.append(int(round(t * ESPEAK_SR)))
            t = (starts[-1] + len(chunk)) / ESPEAK_SR
        t += float(rng.uniform(0.25, 0.45))  # trailing silence, room for the reverb's tail
        dry = np.zeros(int(round(t * ESPEAK_SR)))
        fade = np.linspace(0.0, 1.0, 44)  # 2 ms, inside the word's span
        spans = []
        for start, chunk, word in zip(starts, chunks, plan.words):
            c = chunk.astype(np.float64)
            k = min(len(fade), len(c) // 2)
            if k:
                c[:k] *= fade[:k]
                c[-k:] *= fade[:k][::-1]
            dry[start:start + len(c)] = c
            spans.append((start / ESPEAK_SR, (start + len(c)) / ESPEAK_SR, word))

        y = resample_poly(dry, SR // 50, ESPEAK_SR // 50)  # 320 / 441: to 16 kHz
        if self.room:
            y = self._room(rng, y, spans, room)
        samples = np.clip(np.round(y * OUTPUT_GAIN), -32768, 32767).astype("<i2")
        info = {**delivery, **{k: round(v, 3) for k, v in room.items()}, "cut": cut}
        if stressed:
            info["stressed"] = {k: stressed[k] for k in ("rate", "pitch", "amplitude", "cut")}
        return samples, spans, info

    @staticmethod
    def _room(rng: np.random.Generator, y: np.ndarray, spans: list, room: dict) -> np.ndarray:
        """Reverb (exponentially decaying noise) plus coloured noise at the drawn SNR."""
        rt60 = room["rt60_s"]
        t = np.arange(int(rt60 * SR)) / SR
        response = rng.standard_normal(len(t)) * np.exp(-6.91 * t / rt60)
        response /= math.sqrt(float(np.sum(response ** 2)))
        y = y + room["reverb"] * fftconvolve(y, response)[: len(y)]
        speech = np.concatenate([y[int(s * SR):int(e * SR)] for s, e, _ in spans])
        power = float(np.mean(speech ** 2)) if len(speech) else 1.0
        noise = _coloured_noise(rng, len(y), room["noise_colour"])
        return y + noise * math.sqrt(power / 10 ** (room["snr_db"] / 10))

    def describe(self, truth: dict, plans: list[UtterancePlan], rendered: list[Rendered],
                 ) -> None:
        truth["generator"] = (f"emoalign sample-corpus v{sample_corpus.GENERATOR_VERSION} "
                              f"--voice tts v{TTS_VERSION} (espeak-ng {self.version})")
        speakers = truth["speakers"]
        truth["voice"] = {
            "renderer": "tts",
            "engine": "espeak-ng",
            "engine_version": self.version,
            "room": self.room,
            "speakers": {name: asdict(speaker_voice(Speaker(**speakers[name])))
                         for name in sorted(speakers)},
            "emotions": {code: asdict(p) for code, p in PROSODY.items()},
            "jitter": asdict(JITTER),
            "limits": {k: list(v) for k, v in LIMITS.items()},
            "room_ranges": {k: list(v) for k, v in ROOM.items()},
        }
        if any(plan.stress for plan in plans):
            truth["voice"]["stress"] = ("the stressed word: -a times loudness, -p plus 100 "
                                        "times pitch, -s times rate")
        for plan, r in zip(plans, rendered):
            truth["utterances"][plan.utt_id]["prosody"] = r.info

