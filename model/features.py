"""Speech frames as the model sees them: MFCCs (+ deltas) from torchaudio, then optional
frame stacking, then mean/variance normalisation with statistics fitted on training data.

Training (through the feature store) and serving (the MLflow pyfunc) both call `extract`
and `Normalizer.apply`, so the two can never compute features differently.
"""

from dataclasses import dataclass

import numpy as np
import torch
import torchaudio

from model.spec import FeatureSpec


class Extractor:
    """Waveform (float, mono, at spec.sample_rate) -> frames (T, spec.dim) float32.

    Computes exactly what `torchaudio.transforms.MFCC` computes (HTK mel filterbank, power
    spectrum, dB with an 80 dB floor below the utterance's peak, orthonormal DCT-II) from
    that transform's own filterbank and DCT matrices, but takes the power spectrum as
    re^2 + im^2 instead of |z|^2: the complex magnitude was 40 % of the transform's time.
    Tests hold the two equal.
    """

    def __init__(self, spec: FeatureSpec):
        self.spec = spec
        self.win = int(round(spec.sample_rate * spec.win_ms / 1000))
        self.hop = int(round(spec.sample_rate * spec.hop_ms / 1000))
        self.n_fft = 1 << (self.win - 1).bit_length()  # next power of two: 400 -> 512
        self.reference = torchaudio.transforms.MFCC(
            sample_rate=spec.sample_rate, n_mfcc=spec.n_mfcc,
            melkwargs={"n_fft": self.n_fft, "win_length": self.win, "hop_length": self.hop,
                       "n_mels": spec.n_mels, "center": True})
        self.window = torch.hann_window(self.win)
        self.mel_fb = self.reference.MelSpectrogram.mel_scale.fb  # (freq, mels)
        self.dct = self.reference.dct_mat  # (mels, n_mfcc)
        self.top_db = self.reference.top_db

    def mfcc(self, x: torch.Tensor) -> torch.Tensor:
        """(samples,) -> (T, n_mfcc): torchaudio.transforms.MFCC, transposed."""
        z = torch.stft(x, self.n_fft, self.hop, self.win, self.window, center=True,
                       pad_mode="reflect", return_complex=True).T  # (T, freq)
        power = z.real.square() + z.imag.square()
        db = 10.0 * torch.log10(torch.clamp(power @ self.mel_fb, min=1e-10))  # (T, mels)
        db = torch.maximum(db, db.max() - self.top_db)
        return db @ self.dct

    @torch.no_grad()
    def __call__(self, waveform: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32))
        coefficients = self.mfcc(x)  # (T, n_mfcc)
        parts = [coefficients]
        if self.spec.deltas or self.spec.delta_deltas:
            d1 = deltas(coefficients)
            if self.spec.deltas:
                parts.append(d1)
            if self.spec.delta_deltas:
                parts.append(deltas(d1))
        frames = torch.cat(parts, dim=1).numpy()  # (T, D)
        return stack_frames(frames, self.spec.stack, self.spec.subsample)


def deltas(c: torch.Tensor) -> torch.Tensor:
    """torchaudio.functional.compute_deltas(c.T, win_length=5).T, written out:
    (c[t+1] - c[t-1] + 2 (c[t+2] - c[t-2])) / 10 with the edges replicated. The generic
    convolution compute_deltas runs costs more than the whole MFCC."""
    p = torch.cat([c[:1], c[:1], c, c[-1:], c[-1:]])
    return (p[3:-1] - p[1:-3] + 2 * (p[4:] - p[:-4])) / 10


def stack_frames(frames: np.ndarray, stack: int, subsample: int) -> np.ndarray:
    """Concatenate each frame with the next stack-1 (repeating the last), keep every k-th."""
    if stack > 1:
        padded = np.concatenate([frames, np.repeat(frames[-1:], stack - 1, axis=0)])
        frames = np.concatenate([padded[i:i + len(frames)] for i in range(stack)], axis=1)
    return np.ascontiguousarray(frames[::subsample]) if subsample > 1 else frames


def extract(waveform: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """One-off extraction; the store keeps an Extractor per worker instead."""
    return Extractor(spec)(waveform)


@dataclass
class Normalizer:
    """Per-dimension mean and standard deviation, fitted on training data only.

    `speakers` optionally holds each speaker's own statistics (per-speaker normalisation);
    a speaker it does not know (at serving time, say) gets the global statistics.
    """

    mean: np.ndarray
    std: np.ndarray
    speakers: dict[str, tuple[np.ndarray, np.ndarray]] | None = None

    def apply(self, frames: np.ndarray, speaker: str | None = None) -> np.ndarray:
        mean, std = self.mean, self.std
        if self.speakers and speaker in self.speakers:
            mean, std = self.speakers[speaker]
        return ((frames.astype(np.float32) - mean) / std).astype(np.float32)

    @staticmethod
    def from_moments(total: np.ndarray, total_sq: np.ndarray, count: float,
                     floor: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
        mean = total / count
        var = np.maximum(total_sq / count - mean * mean, floor)
        return mean.astype(np.float32), np.sqrt(var).astype(np.float32)

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist(),
                "speakers": {k: [m.tolist(), s.tolist()] for k, (m, s) in
                             (self.speakers or {}).items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "Normalizer":
        speakers = {k: (np.asarray(m, np.float32), np.asarray(s, np.float32))
                    for k, (m, s) in (data.get("speakers") or {}).items()}
        return cls(np.asarray(data["mean"], np.float32), np.asarray(data["std"], np.float32),
                   speakers or None)
