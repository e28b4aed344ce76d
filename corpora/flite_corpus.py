"""`emoalign sample-corpus --voice flite`: the sample corpus spoken by flite.

corpora.sample_corpus plans the corpus (codes, dialogs, speakers, words, and which
modality carries the emotion) and writes every file; this module only makes the audio, with
flite, a second real synthesiser beside corpora.tts_corpus's espeak-ng:
- each of the ten speakers has a flite voice (slt for the women; kal16, awb and kal for the
  men) and its own base pitch, pitch range, rate and loudness, taken from the plan's
  speaker. Speakers sharing a voice also differ in timbre: each one's audio is resampled by
  the plan's formant scale (0.95..1.05, a vocal tract a little shorter or longer), with the
  pitch and duration asked of flite compensated so that only the formants move;
- the emotion of the delivery (plan.voice_code, "neu" when only the words carry the emotion)
  shifts speaking rate (`--setf duration_stretch=`), pitch level
  (`--setf int_f0_target_mean=`), pitch range (`--setf int_f0_target_stddev=`, and the
  spread of the per-word pitch accents) and loudness (a gain on the samples), by
  tts_corpus's PROSODY table with its JITTER, so every cue's distributions overlap between
  emotions as they do for espeak-ng;
- every word is its own flite call, trimmed to where it sounds (flite's own segment times,
  `-psdur`, say where the word is; the trim keeps the frames around it above the call's
  noise floor), and the words are laid end to end with short pauses scaled by the tempo, so
  each word's .wdseg span is exactly where its sound is;
- tts_corpus's light synthetic reverb and coloured room noise at a per-utterance SNR go on
  top; the output is 16 kHz int16 whatever rate the voice writes (kal writes 8 kHz, the
  others 16 kHz: read from each WAV header).
Every random draw comes from the utterance's own seeded stream ([seed, 5, index]) and flite
is deterministic, so a seed gives the same bytes whatever the number of workers. `--stress`
stays espeak-ng's (`speaks_stress` is False here).

What the settings do on Debian's flite 2.2 ("2.2-current"), measured on "tomorrow morning"
(median F0 of the clearly periodic 40 ms frames by autocorrelation, and the time from the
first to the last sounding 5 ms frame; defaults first):
- duration_stretch 1 / 0.7 / 1.4: 1.40 / 0.89 / 1.78 s (kal16, kal), 1.42 / 1.00 / 2.00 s
  (slt), 1.26 / 0.88 / 1.76 s (awb);
- int_f0_target_mean default / 90 / 150 / 220 Hz: median F0 98 / 92 / 157 / 232 Hz (kal16),
  174 / 93 / 152 / 222 Hz (slt), 134 / 94 / 152 / 222 Hz (awb);
- int_f0_target_stddev default / 5 / 20 / 40 Hz: F0 standard deviation 14 / 4 / 10 / 20 Hz
  (slt), 13 / 3 / 10 / 20 Hz (awb), and at int_f0_target_mean 120 kal16's contour spans
  111-131 / 111-144 / 107-165 Hz at 8 / 16 / 30 Hz (a word's range is capped at a quarter
  of its mean, which the corpus' ranges seldom reach);
- rms, the fifth built-in voice, ignores both int_f0 settings (median F0 102 Hz, standard
  deviation 14 Hz, whatever they are): it is not used.
Through this module (no room; per voice, five utterances of 3-8 words spoken angry, neutral
and sad with the same draws), against neutral: speech RMS 1.40 / 0.70 times (the gain, as
PROSODY asks), median F0 +6.5..+8.6 % / -9..-11 % (PROSODY: +6 / -9 points), seconds per
word -8..-9 % / +17..+19 % (PROSODY's rates 1.10 / 0.85), on each of slt, kal16, awb, kal.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import tempfile
import wave
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from components.errors import UserError
from corpora import sample_corpus
from corpora.sample_corpus import SR, Rendered, Renderer, Speaker, UtterancePlan
from corpora.tts_corpus import JITTER, PROSODY, ROOM, TtsRenderer

FLITE = "flite"
INSTALL_HINT = "install it with `apt-get install flite`"
FLITE_CORPUS_VERSION = "1"

# Every woman speaks slt, flite's one female voice; the men kal16, awb and kal (kal is kal16
# at 8 kHz). Speakers sharing a voice differ by pitch, rate, range, loudness and timbre.
SPEAKER_VOICES = {
    "Ses01F": "slt", "Ses01M": "kal16",
    "Ses02F": "slt", "Ses02M": "awb",
    "Ses03F": "slt", "Ses03M": "kal",
    "Ses04F": "slt", "Ses04M": "awb",
    "Ses05F": "slt", "Ses05M": "kal16",
}
BASE_RANGE = 0.1   # a speaker's F0 standard deviation (int_f0_target_stddev), share of its F0
LEVEL = 1500.0     # speech RMS (int16 units) of a neutral delivery at gain 1: espeak-ng's level
ACCENT = (-0.8, 0.8)       # a word's pitch accent, in units of the utterance's range
DECLINATION = (0.5, -0.5)  # first and last word's pitch offset, in the same units
MAX_WORD_RANGE = 0.25      # a word's int_f0_target_stddev at most this share of its mean


@dataclass(frozen=True)
class Units:
    """What each delivery value means for flite (the truth file says it)."""

    rate: str = "speaking-rate multiplier: duration_stretch = timbre / rate"
    pitch: str = "F0 level, Hz: int_f0_target_mean = (pitch + range * accent) / timbre"
    range: str = ("F0 standard deviation, Hz: int_f0_target_stddev = the least of range and "
                  "a quarter of the word's mean, over timbre")
    amplitude: str = f"gain on the samples: the speech RMS is {LEVEL:g} times it before the room"
    timbre: str = ("the speaker's formant scale: flite's audio is resampled as if recorded "
                   "at timbre times its rate")


# Bounds of the delivery values (rate and amplitude: multipliers; pitch, range: Hz).
LIMITS = {"rate": (0.5, 2.0), "pitch": (60.0, 400.0), "range": (2.0, 80.0),
          "amplitude": (0.15, 2.3)}

# Trimming a word out of its flite call, at 16 kHz.
FRAME = 80             # 5 ms
QUIET_RMS = 4.0        # int16 units: about -78 dBFS
PEAK_DB = -45.0        # sound: within 45 dB of the call's loudest frame ...
FLOOR_FACTOR = 3.0     # ... and three times its noise floor (the 20th percentile frame)
REACH_S = 0.05         # sound this close to flite's word times belongs to the word


def flite_version() -> tuple[str, str]:
    """(path of flite, its version); UserError when it is missing or does not run."""
    path = shutil.which(FLITE)
    if path is None:
        raise UserError(f"--voice flite needs flite, which is not installed (not on PATH); "
                        f"{INSTALL_HINT}")
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(f"flite at {path} does not run ({e}); {INSTALL_HINT}") from None
    # flite 2.2 prints its version and exits 1: the version line is what tells.
    m = re.search(r"version:\s*flite-(\S+)", done.stdout)
    if not m:
        raise UserError(f"flite at {path} does not run as expected; {INSTALL_HINT}")
    return path, m.group(1)


@dataclass(frozen=True)
class SpeakerVoice:
    voice: str
    pitch: float      # F0 level (Hz) before the emotion's shift
    range: float      # F0 standard deviation (Hz)
    rate: float       # speaking-rate multiplier
    amplitude: float  # gain
    timbre: float     # formant scale, 0.95..1.05


def speaker_voice(speaker: Speaker) -> SpeakerVoice:
    """The speaker's voice, fixed for the corpus: a table entry plus the plan's draws."""
    female = speaker.gender == "F"
    return SpeakerVoice(
        voice=SPEAKER_VOICES[speaker.speaker],
        pitch=round(speaker.f0, 1),
        range=round(BASE_RANGE * speaker.f0, 1),
        rate=round(speaker.rate, 3),
        amplitude=round(speaker.gain, 3),
        # As sample_corpus.make_speakers: 1.17 (women) or 1 times 0.95..1.05.
        timbre=round(speaker.formant_scale / (1.17 if female else 1.0), 2),
    )


def bounded(key: str, value: float) -> float:
    lo, hi = LIMITS[key]
    return round(float(np.clip(value, lo, hi)), 3 if key in ("rate", "amplitude") else 1)


def draw_delivery(rng: np.random.Generator, voice: SpeakerVoice, voice_code: str) -> dict:
    """flite settings for one utterance: the speaker's voice, shifted by the emotion,
    jittered. Always four draws from rng, whatever the emotion. PROSODY's pitch is in
    espeak-ng's points, one per 1 % of the speaker's F0 (tts_corpus.speaker_voice)."""
    p = PROSODY.get(voice_code, PROSODY["neu"])
    z = rng.standard_normal(4)
    return {
        "voice": voice.voice,
        "rate": bounded("rate", voice.rate * p.rate * math.exp(JITTER.rate * z[0])),
        "pitch": bounded("pitch", voice.pitch * (1 + (p.pitch + JITTER.pitch * z[1]) / 100)),
        "range": bounded("range", voice.range * p.range * math.exp(JITTER.range * z[2])),
        "amplitude": bounded("amplitude",
                             voice.amplitude * p.loudness * math.exp(JITTER.loudness * z[3])),
    }


def word_settings(delivery: dict, timbre: float, accent: float) -> dict[str, str]:
    """The --setf values of one word: the utterance's delivery with the word's pitch accent,
    compensated for the timbre's resampling (which raises pitch and rate by `timbre`)."""
    mean = float(np.clip(delivery["pitch"] + delivery["range"] * accent, *LIMITS["pitch"]))
    spread = min(delivery["range"], MAX_WORD_RANGE * mean)
    return {"duration_stretch": f"{timbre / delivery['rate']:.4f}",
            "int_f0_target_mean": f"{mean / timbre:.2f}",
            "int_f0_target_stddev": f"{spread / timbre:.2f}"}


def _flite(binary: str, voice: str, settings: dict[str, str], word: str, wav: Path,
           ) -> tuple[np.ndarray, int, list[tuple[str, float]]]:
    """flite's int16 samples for `word`, their rate (from the WAV header) and its segments
    (phone, end in seconds), pauses included."""
    cmd = [binary, "-voice", voice]
    for key, value in settings.items():
        cmd += ["--setf", f"{key}={value}"]
    cmd += ["-psdur", "-t", word, "-o", str(wav)]
    wav.unlink(missing_ok=True)  # never the last word's audio
    # stdin closed: flite reads it in some modes, and a worker's stdin may be anything.
    done = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=60)
    segments = []
    for item in done.stdout.split():
        phone, _, end = item.rpartition(":")
        try:
            segments.append((phone, float(end)))
        except ValueError:
            segments = []
            break
    try:
        with wave.open(str(wav), "rb") as w:
            if (w.getnchannels(), w.getsampwidth(), w.getcomptype()) != (1, 2, "NONE"):
                raise RuntimeError(f"flite wrote {w.getnchannels()} channels of "
                                   f"{8 * w.getsampwidth()}-bit audio, expected 16-bit mono")
            rate = w.getframerate()
            samples = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    except (OSError, EOFError, wave.Error) as e:
        said = done.stderr.strip().splitlines()
        raise RuntimeError(f"flite -voice {voice} failed (exit {done.returncode})"
                           f"{': ' + said[0] if said else ''} ({e})") from None
    if done.returncode != 0 or not segments:
        raise RuntimeError(f"flite -voice {voice} failed (exit {done.returncode})")
    return samples, rate, segments


def to_sr(x: np.ndarray, rate: int, timbre: float = 1.0) -> np.ndarray:
    """Samples at `rate` as SR (16 kHz) audio, read as if recorded at timbre * rate: above
    1 the formants, pitch and tempo rise by that factor."""
    source = round(rate * round(timbre * 100))  # in hundredths of Hz: an exact ratio
    g = math.gcd(SR * 100, source)
    up, down = SR * 100 // g, source // g
    y = x.astype(np.float64)
    return y if up == down else resample_poly(y, up, down)


def _frame_rms(y: np.ndarray) -> np.ndarray:
    n = -(-len(y) // FRAME)
    frames = np.zeros(n * FRAME)
    frames[: len(y)] = y
    return np.sqrt(np.mean(frames.reshape(n, FRAME) ** 2, axis=1))


def word_bounds(y: np.ndarray, start_s: float, end_s: float) -> tuple[int, int]:
    """(first, last + 1) sample of the word in y, one flite call's audio at SR: the
    stretch of sound around flite's own word times (start_s, end_s), grown outwards while
    the 5 ms frames stay sounding (a vowel rings on past flite's last segment), never
    reaching isolated noise in the pauses (kal's diphones click before some words)."""
    rms = _frame_rms(y)
    floor = float(np.percentile(rms, 20))  # a word call is at least a third pauses
    loud = rms >= max(QUIET_RMS, rms.max() * 10 ** (PEAK_DB / 20), FLOOR_FACTOR * floor)
    # Seeds: frames of runs at least 10 ms long within REACH_S of the word's times.
    runs = loud & (np.r_[loud[1:], False] | np.r_[False, loud[:-1]])
    reach = REACH_S * SR / FRAME
    lo = max(0, int(start_s * SR / FRAME - reach))
    hi = min(len(rms), int(math.ceil(end_s * SR / FRAME + reach)))
    seeds = np.flatnonzero(runs[lo:hi]) + lo
    if not len(seeds):
        seeds = np.flatnonzero(runs)  # flite's times missed the sound: all of it
        if not len(seeds):
            raise RuntimeError("no sound")
    a, b = int(seeds[0]), int(seeds[-1])
    while a > 0 and loud[a - 1]:
        a -= 1
    while b + 1 < len(loud) and loud[b + 1]:
        b += 1
    return a * FRAME, min(len(y), (b + 1) * FRAME)


def speak_word(binary: str, voice: str, settings: dict[str, str], timbre: float, word: str,
               wav: Path) -> np.ndarray:
    """One word spoken by flite, at SR, trimmed to its sound (float, int16 scale)."""
    x, rate, segments = _flite(binary, voice, settings, word, wav)
    y = to_sr(x, rate, timbre)
    # flite's times, from the end of the leading pause to the start of the trailing one, on
    # the resampled clock.
    phones = [end for phone, end in segments]
    start = phones[0] if segments[0][0] == "pau" else 0.0
    end = phones[-2] if segments[-1][0] == "pau" and len(phones) > 1 else phones[-1]
    try:
        a, b = word_bounds(y, start / timbre, end / timbre)
    except RuntimeError:
        raise RuntimeError(f"flite -voice {voice} made no sound for {word!r}") from None
    return y[a:b]


class FliteRenderer(Renderer):
    """sample_corpus's plan spoken by flite. Construction checks flite and its voices."""

    speaks_stress = False  # the stressed corpus is espeak-ng's (tts_corpus)

    def __init__(self, room: bool = True):
        self.binary, self.version = flite_version()
        self.room = room  # False: no reverb, no noise (the dry speech, for checks)
        with tempfile.TemporaryDirectory(prefix="emoalign-flite-") as tmp:
            for voice in sorted(set(SPEAKER_VOICES.values())):
                try:
                    speak_word(self.binary, voice, {}, 1.0, "ok", Path(tmp) / "check.wav")
                except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
                    raise UserError(f"flite {self.version} at {self.binary} cannot speak with "
                                    f"voice {voice} ({e}); {INSTALL_HINT}") from None

    def __call__(self, plan: UtterancePlan, speaker: Speaker, seed: int,
                 ) -> tuple[np.ndarray, list[tuple[float, float, str]], dict]:
        # A stream of its own, apart from the built-in synthesiser's [seed, 1, index] and
        # espeak-ng's [seed, 4, index].
        rng = np.random.default_rng([seed, 5, plan.index])
        voice = speaker_voice(speaker)
        delivery = draw_delivery(rng, voice, plan.voice_code)
        room = {key: float(rng.uniform(lo, hi)) for key, (lo, hi) in ROOM.items()}
        n = len(plan.words)
        accents = rng.uniform(*ACCENT, size=n) + (
            np.linspace(*DECLINATION, n) if n > 1 else np.zeros(1))
        with tempfile.TemporaryDirectory(prefix="emoalign-flite-") as tmp:
            wav = Path(tmp) / "word.wav"
            chunks = [speak_word(self.binary, voice.voice,
                                 word_settings(delivery, voice.timbre, float(accent)),
                                 voice.timbre, word, wav)
                      for word, accent in zip(plan.words, accents)]
        # Loudness is the delivery's alone: flite's voices differ fivefold in level.
        speech = np.concatenate(chunks)
        gain = LEVEL * delivery["amplitude"] / (math.sqrt(float(np.mean(speech ** 2))) + 1e-9)

        # Words end to end at SR: short pauses, scaled by the tempo, now and then a longer one.
        tempo = 1.0 / delivery["rate"]
        starts, t = [], float(rng.uniform(0.15, 0.35))
        for i, chunk in enumerate(chunks):
            if i:
                t += float(rng.uniform(0.05, 0.14)) * tempo
                if rng.random() < 0.06:
                    t += float(rng.uniform(0.15, 0.4))
            starts.append(int(round(t * SR)))
            t = (starts[-1] + len(chunk)) / SR
        t += float(rng.uniform(0.25, 0.45))  # trailing silence, room for the reverb's tail
        y = np.zeros(int(round(t * SR)))
        fade = np.linspace(0.0, 1.0, 32)  # 2 ms, inside the word's span
        spans = []
        for start, chunk, word in zip(starts, chunks, plan.words):
            c = chunk * gain
            k = min(len(fade), len(c) // 2)
            if k:
                c[:k] *= fade[:k]
                c[-k:] *= fade[:k][::-1]
            y[start:start + len(c)] = c
            spans.append((start / SR, (start + len(c)) / SR, word))

        if self.room:
            y = TtsRenderer._room(rng, y, spans, room)
        samples = np.clip(np.round(y), -32768, 32767).astype("<i2")
        info = {**delivery, **{k: round(v, 3) for k, v in room.items()}}
        return samples, spans, info

    def describe(self, truth: dict, plans: list[UtterancePlan], rendered: list[Rendered],
                 ) -> None:
        truth["generator"] = (f"emoalign sample-corpus v{sample_corpus.GENERATOR_VERSION} "
                              f"--voice flite v{FLITE_CORPUS_VERSION} (flite {self.version})")
        speakers = truth["speakers"]
        truth["voice"] = {
            "renderer": "flite",
            "engine": "flite",
            "engine_version": self.version,
            "room": self.room,
            "speakers": {name: asdict(speaker_voice(Speaker(**speakers[name])))
                         for name in sorted(speakers)},
            "units": asdict(Units()),
            "emotions": {code: asdict(p) for code, p in PROSODY.items()},
            "emotion_units": "rate, range, loudness: multipliers; pitch: percent of the F0",
            "jitter": asdict(JITTER),
            "accents": {"accent": list(ACCENT), "declination": list(DECLINATION),
                        "max_word_range": MAX_WORD_RANGE},
            "level": LEVEL,
            "limits": {k: list(v) for k, v in LIMITS.items()},
            "room_ranges": {k: list(v) for k, v in ROOM.items()},
        }
        for plan, r in zip(plans, rendered):
            truth["utterances"][plan.utt_id]["prosody"] = r.info
