"""Serving: a wav and its transcript -> class probabilities, computed with the same feature,
vocabulary and normalisation code as training. Torch only: the MLflow wrapper that packages
this lives beside it, in pyfunc.py.

A model is one or more member bundles, one per (fold, seed) (what training writes as
`<member>/model.pt`). Under leave-one-session-out there are five per seed; their
probabilities are averaged, a plain ensemble.
"""

import io
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import soundfile
import torch

from model.data import Example, batch_indices, collate
from model.features import Extractor, FeatureSpec, Normalizer
from model.network import build_model
from model.spec import ModelSpec
from model.text import Tokenizer
from model.vocab import Vocabulary


# Frames of a new speaker's own speech (10 ms each) before serving normalises that speaker
# with its own statistics, as training did: 30 s.
ENROL_MIN_FRAMES = 3000


class InputError(ValueError):
    """A request the model cannot score (unreadable audio, wrong sample rate); says which."""


@dataclass
class Inputs:
    """How a member sees an utterance: its vocabulary and normaliser (both fitted on its
    fold's training data only) and its classes. Training, evaluation and serving all
    turn utterances into examples here."""

    vocab: Vocabulary
    normalizer: Normalizer
    classes: list[str]

    def example(self, utt_id: str, frames: np.ndarray, transcript: str | None,
                speaker: str | None = None, label: str | None = None) -> Example:
        label_id = self.classes.index(label) if label in self.classes else -1
        return Example(utt_id, self.normalizer.apply(np.asarray(frames), speaker),
                       self.vocab.encode(transcript), label_id)


@dataclass
class LoadedMember:
    """One (fold, seed) model, ready to score, with the bundle it was loaded from."""

    model: torch.nn.Module
    inputs: Inputs
    bundle: dict


def load_member(path: Path, device="cpu") -> LoadedMember:
    # weights_only: a bundle holds tensors, lists and plain numbers, never code.
    bundle = torch.load(Path(path), map_location=device, weights_only=True)
    model = build_model(ModelSpec.from_dict(bundle["spec"]))
    model.load_state_dict(bundle["state_dict"])
    model.to(device).eval()
    # Bundles saved with today's tokenizer have no "tokenizer" key.
    vocab = Vocabulary.from_list(bundle["vocab"], Tokenizer.from_dict(bundle.get("tokenizer")))
    inputs = Inputs(vocab, Normalizer.from_dict(bundle["normalizer"]), list(bundle["classes"]))
    return LoadedMember(model, inputs, bundle)


def read_audio(wav) -> tuple[np.ndarray, int]:
    """`wav` is a path or the bytes of a WAV file."""
    source = io.BytesIO(wav) if isinstance(wav, (bytes, bytearray)) else str(wav)
    try:
        audio, rate = soundfile.read(source, dtype="float32")
    except Exception as e:
        name = "the WAV bytes" if isinstance(source, io.BytesIO) else source
        raise InputError(f"cannot read {name}: {str(e).splitlines()[0]}") from None
    if audio.ndim == 2:
        if audio.shape[1] != 1:
            raise InputError(f"audio has {audio.shape[1]} channels; the model takes mono")
        audio = audio[:, 0]
    if len(audio) == 0:
        raise InputError("audio is empty")
    return audio, rate


class Predictor:
    def __init__(self, bundle_paths: list[Path], device="cpu"):
        if not bundle_paths:
            raise ValueError("a Predictor needs at least one member bundle")
        self.device = torch.device(device)
        self.members = [load_member(p, self.device) for p in bundle_paths]
        first = self.members[0].bundle
        self.classes: list[str] = list(first["classes"])
        self.feature_spec = FeatureSpec.from_dict(first["feature_spec"])
        # Training saw frames after the store's rounding (float16 by default); so must serving.
        self.feature_dtype = np.dtype(first.get("feature_dtype", "float32"))
        self.extractor = Extractor(self.feature_spec)

    def audio(self, wav) -> np.ndarray:
        """The samples of `wav` (a path or WAV bytes; samples already read pass through),
        checked to be at the model's rate."""
        if isinstance(wav, np.ndarray):
            return wav
        audio, rate = read_audio(wav)
        if rate != self.feature_spec.sample_rate:
            raise InputError(f"audio is {rate} Hz; the model takes "
                             f"{self.feature_spec.sample_rate} Hz")
        return audio

    def frames(self, wav) -> np.ndarray:
        return self.extractor(self.audio(wav)).astype(self.feature_dtype)

    def predict_proba(self, wavs: list, transcripts: list[str],
                      speakers: list[str | None] | None = None) -> np.ndarray:
        """(N, C) class probabilities, averaged over the members; `wavs` as `audio` takes
        them. Under per-speaker
        normalisation a speaker the model has not seen is normalised with the statistics of
        its own utterances in this request when they are long enough (ENROL_MIN_FRAMES),
        otherwise with the global ones."""
        raw = [self.frames(w) for w in wavs]
        speakers = speakers or [None] * len(raw)
        total = np.zeros((len(raw), len(self.classes)))
        for member in self.members:
            normalizer = member.inputs.normalizer.with_speakers_from(raw, speakers,
                                                                   ENROL_MIN_FRAMES)
            inputs = replace(member.inputs, normalizer=normalizer)
            examples = [inputs.example(str(i), f, t, s)
                        for i, (f, t, s) in enumerate(zip(raw, transcripts, speakers))]
            total += np.exp(predict_log_probs(member.model, examples, self.device))
        return total / len(self.members)


def predict_log_probs(model, examples: list[Example], device, batch_size: int = 64
                      ) -> np.ndarray:
    """Class log-probabilities (N, C), in the order of `examples`."""
    model.eval()
    n_classes = next(m for m in reversed(list(model.modules()))
                     if isinstance(m, torch.nn.Linear)).out_features
    out = np.zeros((len(examples), n_classes))
    with torch.no_grad():
        for idx in batch_indices([len(e.frames) for e in examples], batch_size, None):
            batch = collate([examples[i] for i in idx]).to(device)
            output = model(batch.frames, batch.frame_lengths, batch.words, batch.word_lengths)
            out[idx] = model.log_probs(output).cpu().numpy()
    return out
