"""Recognised transcripts: the words `serving.recognizer` hears in each utterance's audio,
for `evaluate.transcripts=asr` (the test utterances scored on them) and
`train.transcripts=asr` (a model trained on them).

Recognition takes about a fifth of real time on one core, so what it finds is kept across
runs under features.cache_dir, as the feature stores are: one small file per utterance,
named by the sha256 of its wav's bytes, in a folder named by the recogniser and its version.
Runs that share the folder, even at once, reuse each other's work.
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import soundfile

from components.config import Config
from components.errors import UserError
from model import recognizer
from model.metrics import word_error_rate

CACHE_FOLDER = "transcripts"  # under features.cache_dir


class RecognitionError(UserError):
    """The recogniser is not installed, or an utterance's audio cannot be read."""


@dataclass
class Recognition:
    """What one call recognised: every utterance's text, and the cost of those that were
    not in the cache."""

    texts: dict[str, str]
    recognised: int = 0        # recognised now, not read from the cache
    seconds: float = 0.0       # wall-clock time recognising them
    cpu_seconds: float = 0.0   # time the recogniser spent on them, summed over processes
    audio_seconds: float = 0.0 # how much audio they held
    workers: int = 1

    def speed(self) -> dict:
        """Utterances per second of one core and the real-time factor (a core's seconds
        per second of audio): what a run at IEMOCAP size scales by, whatever else the
        machine was doing. Also per wall-clock second, on `workers` processes."""
        if not self.recognised:
            return {}
        return {"utterances_per_core_s": self.recognised / max(self.cpu_seconds, 1e-9),
                "real_time_factor": self.cpu_seconds / max(self.audio_seconds, 1e-9),
                "utterances_per_s": self.recognised / max(self.seconds, 1e-9),
                "workers": self.workers}


def _recognise_file(job: tuple[str, str]) -> tuple[str, float, float]:
    """(text, audio seconds, recognition seconds) of one wav."""
    wav, name = job
    audio, rate = soundfile.read(wav, dtype="float32")
    if audio.ndim != 1 or rate != recognizer.SAMPLE_RATE:
        raise ValueError(f"{wav} is not mono {recognizer.SAMPLE_RATE} Hz audio")
    started = time.process_time()
    text = recognizer.transcribe(audio, name)
    return text, len(audio) / rate, time.process_time() - started


@dataclass
class Transcriber:
    """`serving.recognizer`'s transcripts of wav files, from the cache where it has them;
    with no cache folder, from memory within this process."""

    name: str
    cache_dir: Path | None = None
    workers: int = 1
    _memory: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, config: Config) -> "Transcriber":
        cache = config.features.cache_dir
        return cls(config.serving.recognizer, Path(cache) if cache else None,
                   config.features.workers or len(os.sched_getaffinity(0)))

    def __post_init__(self):
        try:
            self.identity = recognizer.identity(self.name)
            recognizer.recognizer(self.name)  # not installed: said before any work
        except recognizer.RecognizerError as e:
            raise RecognitionError(str(e)) from None

    def _entry(self, digest: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / CACHE_FOLDER / self.identity / digest[:2] / f"{digest}.txt"

    def _cached(self, digest: str) -> str | None:
        if digest in self._memory:
            return self._memory[digest]
        entry = self._entry(digest)
        return entry.read_text() if entry is not None and entry.is_file() else None

    def _keep(self, digest: str, text: str) -> None:
        self._memory[digest] = text
        entry = self._entry(digest)
        if entry is not None:
            entry.parent.mkdir(parents=True, exist_ok=True)
            partial = entry.with_name(f"{entry.name}.{os.getpid()}")
            partial.write_text(text)
            os.replace(partial, entry)  # a reader never sees half a transcript

    def recognise(self, wavs: dict[str, str]) -> Recognition:
        """utt_id -> wav path in; each utterance's recognised text out."""
        digests = {}
        for utt_id, wav in wavs.items():
            try:
                digests[utt_id] = hashlib.sha256(Path(wav).read_bytes()).hexdigest()
            except OSError as e:
                raise RecognitionError(f"cannot read {wav} ({utt_id}): {e.strerror}") from None
        texts = {u: self._cached(d) for u, d in digests.items()}
        todo = sorted({digests[u]: wavs[u] for u, t in texts.items() if t is None}.items())
        result = Recognition({}, workers=min(self.workers, max(1, len(todo))))
        started = time.perf_counter()
        jobs = [(wav, self.name) for _, wav in todo]
        pool = ProcessPoolExecutor(result.workers) if result.workers > 1 and len(todo) > 4 \
            else None
        try:
            done = pool.map(_recognise_file, jobs, chunksize=4) if pool else \
                map(_recognise_file, jobs)
            for (digest, wav), (text, audio_seconds, cpu_seconds) in zip(todo, done):
                self._keep(digest, text)
                result.audio_seconds += audio_seconds
                result.cpu_seconds += cpu_seconds
        except (ValueError, RuntimeError) as e:
            raise RecognitionError(f"cannot recognise: {str(e).splitlines()[0]}") from None
        finally:
            if pool:
                pool.shutdown(cancel_futures=True)
        result.recognised, result.seconds = len(todo), time.perf_counter() - started
        result.texts = {u: self._cached(d) for u, d in digests.items()}
        return result


def recognised_rows(rows: pd.DataFrame, ids: list[str], transcriber: Transcriber
                    ) -> tuple[pd.DataFrame, dict]:
    """`rows` with the transcripts of `ids` replaced by what the recogniser hears, and a
    summary: the recogniser, its word error rate against the replaced transcripts
    (model.metrics.word_error_rate) and the cost of what was not in the cache."""
    recognition = transcriber.recognise({u: rows.at[u, "wav_path"] for u in ids})
    gold = [rows.at[u, "transcript"] for u in ids]
    heard = [recognition.texts[u] for u in ids]
    replaced = rows.copy()
    replaced.loc[ids, "transcript"] = heard
    summary = {"recognizer": transcriber.identity, "utterances": len(ids),
               **word_error_rate(gold, heard), "recognised_now": recognition.recognised,
               "seconds": round(recognition.seconds, 3),
               "cpu_seconds": round(recognition.cpu_seconds, 3),
               "audio_seconds": round(recognition.audio_seconds, 3),
               **recognition.speed()}
    return replaced, summary
