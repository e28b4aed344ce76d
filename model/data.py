"""Examples into padded batches, and batches of similar length (bucketing)."""

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from model.spec import PAD_ID


@dataclass
class Example:
    utt_id: str
    frames: np.ndarray      # (T, F), normalised
    words: list[int]        # vocabulary ids
    label: int = -1         # -1 when unknown (serving)


@dataclass
class Batch:
    utt_ids: list[str]
    frames: torch.Tensor         # (B, T, F) zero-padded
    frame_lengths: torch.Tensor  # (B,)
    words: torch.Tensor          # (B, W) padded with 0
    word_lengths: torch.Tensor   # (B,)
    labels: torch.Tensor         # (B,)

    def to(self, device) -> "Batch":
        return Batch(self.utt_ids, self.frames.to(device), self.frame_lengths.to(device),
                     self.words.to(device), self.word_lengths.to(device),
                     self.labels.to(device))


def collate(examples: list[Example]) -> Batch:
    frame_lengths = torch.tensor([len(e.frames) for e in examples])
    word_lengths = torch.tensor([len(e.words) for e in examples])
    frames = pad_sequence([torch.from_numpy(np.asarray(e.frames, np.float32)) for e in examples],
                          batch_first=True)
    words = pad_sequence([torch.tensor(e.words, dtype=torch.long) for e in examples],
                         batch_first=True, padding_value=PAD_ID)
    return Batch([e.utt_id for e in examples], frames, frame_lengths, words, word_lengths,
                 torch.tensor([e.label for e in examples]))


def batch_indices(lengths: list[int], batch_size: int, rng: np.random.Generator | None,
                  bucketing: bool = True) -> list[np.ndarray]:
    """Index batches. With bucketing, examples of similar length share a batch (little
    padding); batch order is shuffled. rng None keeps order (evaluation)."""
    n = len(lengths)
    if bucketing:
        # Sort by length with a little noise so batches differ between epochs.
        keys = np.asarray(lengths, dtype=float)
        if rng is not None:
            keys = keys * rng.uniform(0.9, 1.1, size=n)
        order = np.argsort(keys, kind="stable")
    else:
        order = rng.permutation(n) if rng is not None else np.arange(n)
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches
