"""Speech frames as the model sees them: MFCCs from torchaudio (or the magnitude spectrum,
`FeatureSpec.kind`), optionally voicing, log-F0 and log energy per frame (prosody, which
MFCCs mostly discard), deltas of all of them, then optional frame stacking, then
mean/variance normalisation with statistics fitted on training data.

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
        self.n_fft = spec.n_fft  # next power of two: 400 -> 512
        self.reference = torchaudio.transforms.MFCC(
            sample_rate=spec.sample_rate, n_mfcc=spec.n_mfcc,
            melkwargs={"n_fft": self.n_fft, "win_length": self.win, "hop_length": self.hop,
                       "n_mels": spec.n_mels, "center": True})
        self.window = torch.hann_window(self.win)
        self.mel_fb = self.reference.MelSpectrogram.mel_scale.fb  # (freq, mels)
        self.dct = self.reference.dct_mat  # (mels, n_mfcc)
        self.top_db = self.reference.top_db
        self.max_lag = int(spec.sample_rate / spec.f0_min)
        self.min_lag = max(2, int(spec.sample_rate / spec.f0_max))

    def mfcc(self, x: torch.Tensor) -> torch.Tensor:
        """(samples,) -> (T, n_mfcc): torchaudio.transforms.MFCC, transposed."""
        z = torch.stft(x, self.n_fft, self.hop, self.win, self.window, center=True,
                       pad_mode="reflect", return_complex=True).T  # (T, freq)
        power = z.real.square() + z.imag.square()
        db = 10.0 * torch.log10(torch.clamp(power @ self.mel_fb, min=1e-10))  # (T, mels)
        db = torch.maximum(db, db.max() - self.top_db)
        return db @ self.dct

    def spectrum(self, x: torch.Tensor) -> torch.Tensor:
        """(samples,) -> (T, n_fft/2 + 1): the magnitude |STFT| on the MFCC's frame grid."""
        z = torch.stft(x, self.n_fft, self.hop, self.win, self.window, center=True,
                       pad_mode="reflect", return_complex=True).T  # (T, freq)
        return (z.real.square() + z.imag.square()).sqrt()

    @torch.no_grad()
    def __call__(self, waveform: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32))
        if self.spec.max_seconds:
            x = x[:int(round(self.spec.max_seconds * self.spec.sample_rate))]
        emphasised = pre_emphasis(x, self.spec.pre_emphasis) if self.spec.pre_emphasis else x
        if self.spec.kind == "spectrum":
            coefficients = self.spectrum(emphasised)  # (T, n_fft/2 + 1)
        else:
            coefficients = self.mfcc(emphasised)  # (T, n_mfcc)
        if self.spec.pitch or self.spec.energy:
            coefficients = torch.cat([coefficients, self.prosody(x)], dim=1)  # (T, base_dim)
        parts = [coefficients]
        if self.spec.deltas or self.spec.delta_deltas:
            d1 = deltas(coefficients)
            if self.spec.deltas:
                parts.append(d1)
            if self.spec.delta_deltas:
                parts.append(deltas(d1))
        frames = torch.cat(parts, dim=1).numpy()  # (T, D)
        return stack_frames(frames, self.spec.stack, self.spec.subsample)


    def prosody(self, x: torch.Tensor) -> torch.Tensor:
        """(samples,) -> (T, 2 * pitch + energy): voicing, log-F0, log energy, on the MFCC's
        frame grid (frame t centred on sample t * hop)."""
        frames = self._pitch_frames(x)  # (T, win + max_lag)
        head = frames[:, :self.win]
        power = head.square().mean(1)  # (T,)
        columns = []
        if self.spec.pitch:
            voicing, log_f0 = yin(frames, self.win, self.min_lag, self.max_lag,
                                  self.spec.sample_rate, audible=power > SILENCE_POWER)
            columns += [voicing, log_f0]
        if self.spec.energy:
            columns.append(10 * torch.log10(power + 1e-10))
        return torch.stack(columns, dim=1).float()

    def _pitch_frames(self, x: torch.Tensor) -> torch.Tensor:
        """Windows of win + max_lag samples (the lag search needs the extra max_lag), one per
        MFCC frame, their first win samples centred as the MFCC's window is; zero padded."""
        width = self.win + self.max_lag
        n_frames = 1 + len(x) // self.hop
        padded = torch.nn.functional.pad(x, (self.win // 2, width))
        return padded.unfold(0, width, self.hop)[:n_frames]


def pre_emphasis(x: torch.Tensor, a: float) -> torch.Tensor:
    """x[t] - a x[t-1], the first sample kept, so the frames stay where they were."""
    return torch.cat([x[:1], x[1:] - a * x[:-1]])


# Mean power below which a frame is silence (-70 dBFS): never voiced.
SILENCE_POWER = 1e-7
# YIN's threshold on the cumulative mean normalised difference: a dip below it is a period.
YIN_THRESHOLD = 0.2


def yin(frames: torch.Tensor, win: int, min_lag: int, max_lag: int, sample_rate: int,
        audible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """De Cheveigné & Kawahara's YIN on each row of frames (T, win + max_lag): per frame a
    voicing value in [0, 1] (1 - the difference function's dip; 0 when unvoiced) and log-F0
    (Hz), interpolated across unvoiced frames so the sequence stays smooth."""
    # No circular wrap-around for lags up to max_lag once n_fft >= win + max_lag.
    n_fft = 1 << (frames.shape[1] - 1).bit_length()
    head = frames[:, :win]
    # d(tau) = sum_j (x_j - x_{j+tau})^2 over the first win samples, from one FFT
    # cross-correlation and running sums of squares.
    cross = torch.fft.irfft(torch.fft.rfft(head, n_fft).conj() * torch.fft.rfft(frames, n_fft),
                            n_fft)[:, :max_lag + 1]
    squares = torch.nn.functional.pad(frames.square().cumsum(1), (1, 0))
    lags = torch.arange(max_lag + 1, dtype=frames.dtype)
    index = torch.arange(max_lag + 1)
    shifted = squares[:, index + win] - squares[:, index]
    diff = (head.square().sum(1, keepdim=True) + shifted - 2 * cross).clamp(min=0)
    # Cumulative mean normalisation: d'(tau) = d(tau) tau / sum_{k<=tau} d(k), d'(0) = 1.
    running = diff[:, 1:].cumsum(1).clamp(min=1e-12)
    norm = torch.cat([torch.ones_like(diff[:, :1]), diff[:, 1:] * lags[1:] / running], 1)
    search = norm[:, min_lag:max_lag + 1]  # (T, lags searched)
    below = search < YIN_THRESHOLD
    # The first dip below the threshold (an octave-safe choice), then its lowest point;
    # frames with no dip are unvoiced.
    first = below.double().argmax(1, keepdim=True)
    after = torch.arange(search.shape[1]) >= first
    in_dip = after & ((after & ~below).cumsum(1) == 0)
    best = torch.where(in_dip, search, torch.full_like(search, float("inf"))).argmin(1)
    voiced = below.any(1) & audible
    lag = best + min_lag
    # Parabolic interpolation of the dip for a sub-sample period.
    left = norm.gather(1, (lag - 1)[:, None])[:, 0]
    mid = norm.gather(1, lag[:, None])[:, 0]
    right = norm.gather(1, (lag + 1).clamp(max=max_lag)[:, None])[:, 0]
    curve = left - 2 * mid + right
    offset = torch.where(curve > 0, 0.5 * (left - right) / curve, torch.zeros_like(curve))
    period = lag + offset.clamp(-1, 1)
    voicing = torch.where(voiced, (1 - mid).clamp(0, 1), torch.zeros_like(mid))
    log_f0 = torch.log(sample_rate / period)
    return voicing, _bridge_unvoiced(log_f0, voiced, sample_rate / max_lag,
                                     sample_rate / min_lag)


def _bridge_unvoiced(log_f0: torch.Tensor, voiced: torch.Tensor, low: float,
                     high: float) -> torch.Tensor:
    """log-F0 of the voiced frames, linearly interpolated across the unvoiced ones (held at
    the edges); an utterance with no voiced frame gets the middle of the search range."""
    index = torch.nonzero(voiced)[:, 0].numpy()
    if len(index) == 0:
        return torch.full_like(log_f0, 0.5 * float(np.log(low * high)))
    filled = np.interp(np.arange(len(log_f0)), index, log_f0.numpy()[index])
    return torch.from_numpy(filled)


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

    def with_speakers_from(self, frames: list[np.ndarray], speakers: list[str | None],
                           min_frames: int) -> "Normalizer":
        """Per-speaker normalisation for speakers it has not seen: each one's statistics from
        `frames` (a request's utterances), when they hold at least `min_frames` frames of it.
        Global normalisation (no `speakers`) is left as it is."""
        if not self.speakers:
            return self
        new = {}
        for speaker in {s for s in speakers if s and s not in self.speakers}:
            mine = [f.astype(np.float64) for f, s in zip(frames, speakers) if s == speaker]
            count = sum(len(f) for f in mine)
            if count >= min_frames:
                new[speaker] = self.from_moments(sum(f.sum(0) for f in mine),
                                                 sum((f * f).sum(0) for f in mine), count)
        return Normalizer(self.mean, self.std, {**self.speakers, **new}) if new else self

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
