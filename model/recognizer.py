"""Words for an utterance that comes without its transcript: an offline speech recogniser,
16 kHz mono float audio in, text out.

RECOGNIZERS names each recogniser (`serving.recognizer` picks one). To add one, a faster-
whisper model from a local folder say, write a class like PocketSphinx (`package`,
`install`, `version()`, and `__call__(audio) -> str`) and add it to RECOGNIZERS: the model,
its features and its training stay as they are.
"""

import functools
import importlib.metadata
import threading

import numpy as np

SAMPLE_RATE = 16_000
DEFAULT = "pocketsphinx"
# Below this level an utterance holds no speech (validation's silence floor). Asked anyway,
# PocketSphinx names a word of its language model: one second of digital silence is "dog".
SILENCE_DBFS = -55.0

# Where a transcript came from, as predictions report it. NONE: none was given and nothing
# was recognised, so the model hears the speech alone (an empty transcript).
GIVEN, RECOGNISED, NONE = "given", "recognised", "none"


class RecognizerError(ValueError):
    """The recogniser cannot run (unknown, or not installed); says how to install it."""


class PocketSphinx:
    """CMU PocketSphinx 5 with the US English acoustic model, language model and
    dictionary its wheel carries: no download, no network. About a fifth of real time on
    one core; on synthetic speech it gets more than half the words wrong."""

    package = "pocketsphinx"
    install = "pip install pocketsphinx"

    def __init__(self):
        from pocketsphinx import Decoder

        self.decoder = Decoder(loglevel="FATAL")
        self.lock = threading.Lock()  # one decoder, one utterance at a time

    @classmethod
    def version(cls) -> str:
        return importlib.metadata.version(cls.package)

    def __call__(self, audio: np.ndarray) -> str:
        pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
        with self.lock:
            self.decoder.start_utt()
            self.decoder.process_raw(pcm, full_utt=True)
            self.decoder.end_utt()
            hypothesis = self.decoder.hyp()
        return hypothesis.hypstr if hypothesis else ""


RECOGNIZERS = {"pocketsphinx": PocketSphinx}


def _class_of(name: str) -> type:
    if name not in RECOGNIZERS:
        raise RecognizerError(f"unknown speech recogniser {name!r} (known: "
                              f"{', '.join(RECOGNIZERS)})")
    return RECOGNIZERS[name]


def identity(name: str) -> str:
    """`name-version`: what a recognised transcript depends on besides the audio."""
    cls = _class_of(name)
    try:
        return f"{name}-{cls.version()}"
    except importlib.metadata.PackageNotFoundError:
        raise RecognizerError(_not_installed(name)) from None


def _not_installed(name: str) -> str:
    return f"speech recogniser {name!r} is not installed: {_class_of(name).install}"


@functools.cache  # loading a recogniser's model takes a while: once per process
def recognizer(name: str):
    cls = _class_of(name)
    try:
        return cls()
    except ImportError:
        raise RecognizerError(_not_installed(name)) from None


def level_dbfs(audio: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0
    return 20 * np.log10(rms) if rms > 0 else -np.inf


def transcribe(audio: np.ndarray, name: str = DEFAULT) -> str:
    """What `name` hears in 16 kHz mono audio; "" for silence."""
    if level_dbfs(audio) < SILENCE_DBFS:
        recognizer(name)  # not installed is said all the same
        return ""
    return recognizer(name)(audio).strip()


def fill_in(audios: list[np.ndarray], transcripts: list, name: str = DEFAULT
            ) -> tuple[list[str], list[str]]:
    """Each utterance's transcript and where it came from (GIVEN, RECOGNISED, NONE): a
    missing or blank one is recognised from its audio."""
    texts, sources = [], []
    for audio, given in zip(audios, transcripts):
        if isinstance(given, str) and given.strip():
            texts.append(given)
            sources.append(GIVEN)
            continue
        heard = transcribe(audio, name)
        texts.append(heard)
        sources.append(RECOGNISED if heard else NONE)
    return texts, sources
