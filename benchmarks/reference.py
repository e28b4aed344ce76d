"""Straightforward reference implementations of the four kinds, the floor each of emoalign's
models must reach on the same split (benchmarks/fusion.py runs them side by side).

What a reader of Xu et al. (2019) would write first, with none of emoalign's recipe:
- speech: 40 MFCCs per 10 ms frame (no deltas, no prosody), normalised with the training
  frames' mean and std, a BiLSTM-64 over every frame (no pooling), mean over time, linear;
- text: 100-d trainable embeddings, BiLSTM-64, max over words, linear;
- late fusion: the speech and text references, trained apart, probabilities averaged;
- align: both encoders, additive attention of each word state over all speech frames,
  [aligned speech; word state] through a BiLSTM-64, max over words, linear.
Adam at 1e-3, batch 32, dropout 0.3 on the pooled vector, 25 epochs, and the last epoch's
weights: no early stopping, no schedule, no augmentation, no clipping. Training data is the
fold's training sessions (emoalign's validation speakers included: nothing is held out
for model selection).

    .venv/bin/python benchmarks/reference.py --store DIR --manifest FILE [--kind speech]
        [--protocol holdout|loso] [--seed 0]

The store must hold 40 MFCCs without deltas (`reference_store_config()`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components import outputs  # noqa: E402
from components.config import FeaturesConfig, load_config  # noqa: E402
from components.feature_store import FeatureStore  # noqa: E402
from components.folds import make_folds  # noqa: E402
from model.metrics import unweighted_accuracy  # noqa: E402
from model.network import BiLSTM  # noqa: E402
from model.vocab import Vocabulary  # noqa: E402

EPOCHS, BATCH, LR, HIDDEN, EMBED, DROPOUT = 25, 32, 1e-3, 64, 100, 0.3


def reference_store_config(**storage) -> FeaturesConfig:
    return FeaturesConfig(n_mfcc=40, n_mels=40, deltas=False, delta_deltas=False, pitch=False,
                          energy=False, normalization="global", **storage)


class LSTM(BiLSTM):
    """BiLSTM-64 with a packed run's outputs (model.network.BiLSTM computes them without
    packing, which costs 10x or more on CPU over 650-frame utterances)."""

    def __init__(self, inputs: int):
        super().__init__(inputs, HIDDEN)


def mask_of(lengths, size):
    return torch.arange(size)[None, :] < lengths[:, None]


class Reference(nn.Module):
    def __init__(self, kind: str, n_frames_dim: int, vocab_size: int, n_classes: int):
        super().__init__()
        self.kind = kind
        if kind in ("speech", "align"):
            self.speech = LSTM(n_frames_dim)
        if kind in ("text", "align"):
            self.embed = nn.Embedding(vocab_size, EMBED, padding_idx=0)
            self.text = LSTM(EMBED)
        if kind == "align":
            self.w_word = nn.Linear(2 * HIDDEN, HIDDEN, bias=False)
            self.w_speech = nn.Linear(2 * HIDDEN, HIDDEN)
            self.v = nn.Linear(HIDDEN, 1, bias=False)
            self.fusion = LSTM(4 * HIDDEN)
        self.dropout = nn.Dropout(DROPOUT)
        self.out = nn.Linear(2 * HIDDEN, n_classes)

    def forward(self, frames, frame_lengths, words, word_lengths):
        if self.kind == "speech":
            states = self.speech(frames, frame_lengths)
            mask = mask_of(frame_lengths, states.shape[1])[..., None]
            pooled = (states * mask).sum(1) / frame_lengths[:, None]
        else:
            states = self.text(self.embed(words), word_lengths)  # (B, W, 2H)
            if self.kind == "align":
                speech = self.speech(frames, frame_lengths)  # (B, T, 2H)
                scores = self.v(torch.tanh(self.w_word(states)[:, :, None]
                                           + self.w_speech(speech)[:, None])).squeeze(-1)
                scores = scores.masked_fill(~mask_of(frame_lengths, speech.shape[1])[:, None],
                                            float("-inf"))  # (B, W, T)
                aligned = torch.softmax(scores, -1) @ speech
                states = self.fusion(torch.cat([aligned, states], -1), word_lengths)
            mask = mask_of(word_lengths, states.shape[1])[..., None]
            pooled = states.masked_fill(~mask, float("-inf")).amax(1)
        return self.out(self.dropout(pooled))


def _tensors(items):
    frames, words, labels = zip(*items)
    return (pad_sequence([torch.from_numpy(f) for f in frames], batch_first=True),
            torch.tensor([len(f) for f in frames]),
            pad_sequence([torch.tensor(w) for w in words], batch_first=True),
            torch.tensor([len(w) for w in words]), torch.tensor(labels))


def _batches(items, rng=None):
    """Batches of similar length (sorted with noise when training), in random order."""
    lengths = np.array([len(f) for f, _, _ in items], dtype=float)
    order = np.argsort(lengths * (rng.uniform(0.9, 1.1, len(items)) if rng else 1),
                       kind="stable")
    chunks = [order[i:i + BATCH] for i in range(0, len(order), BATCH)]
    if rng is not None:
        chunks = [chunks[i] for i in rng.permutation(len(chunks))]
    return [(chunk, _tensors([items[i] for i in chunk])) for chunk in chunks]


def train_and_predict(kind: str, train_items, test_items, vocab_size: int, n_classes: int,
                      seed: int) -> np.ndarray:
    """Test-set class probabilities (N, C) of one reference model."""
    if kind == "late_fusion":
        return 0.5 * (train_and_predict("speech", train_items, test_items, vocab_size,
                                        n_classes, seed)
                      + train_and_predict("text", train_items, test_items, vocab_size,
                                          n_classes, seed))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = Reference(kind, train_items[0][0].shape[1], vocab_size, n_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    for _ in range(EPOCHS):
        model.train()
        for _, (frames, fl, words, wl, labels) in _batches(train_items, rng):
            loss = F.cross_entropy(model(frames, fl, words, wl), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    probabilities = np.zeros((len(test_items), n_classes))
    with torch.no_grad():
        for chunk, (frames, fl, words, wl, _) in _batches(test_items):
            probabilities[chunk] = torch.softmax(model(frames, fl, words, wl), -1).numpy()
    return probabilities


def run_fold(store_dir: Path, manifest: Path, kind: str, protocol: str, fold: str,
             seed: int) -> dict:
    """One (fold, seed) reference model on the fold's test session: UA, WA, predictions."""
    config = load_config(None, [f"protocol={protocol}"] + (
        [f"holdout_session={fold.removeprefix('session')}"] if protocol == "holdout" else []))
    classes = config.ingest.classes
    rows = outputs.labelled_rows(manifest, classes)
    split = next(f for f in make_folds(rows, config) if f.name == fold)
    store = FeatureStore(store_dir)
    # Every utterance of the other sessions, in manifest order, whatever our recipe holds
    # out for validation: the reference must not move when our defaults do.
    train_ids = rows.loc[rows["session"] != split.test_session, "utt_id"].tolist()
    stacked = np.concatenate([store.get(u) for u in train_ids]).astype(np.float64)
    mean, std = stacked.mean(0), stacked.std(0) + 1e-5
    vocab = Vocabulary.build(rows.loc[train_ids, "transcript"])

    def items(ids):
        return [(((store.get(u) - mean) / std).astype(np.float32),
                 vocab.encode(rows.at[u, "transcript"]), classes.index(rows.at[u, "label"]))
                for u in ids]

    test = items(split.test_ids)
    probabilities = train_and_predict(kind, items(train_ids), test, len(vocab), len(classes),
                                      seed)
    labels = np.array([label for _, _, label in test])
    predicted = probabilities.argmax(1)
    return {"kind": kind, "fold": fold, "seed": seed, "utt_ids": split.test_ids,
            "labels": labels, "predicted": predicted, "probabilities": probabilities,
            **scores(labels, predicted, len(classes))}


def scores(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> dict:
    return {"ua": float(unweighted_accuracy(labels, predicted, n_classes)[0]),
            "wa": float((labels == predicted).mean()), "n_test": len(labels)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--kind", default="speech",
                        choices=["speech", "text", "late_fusion", "align"])
    parser.add_argument("--protocol", default="holdout", choices=["holdout", "loso"])
    parser.add_argument("--fold", default="session5")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    r = run_fold(args.store, args.manifest, args.kind, args.protocol, args.fold, args.seed)
    print(f"reference {r['kind']} {r['fold']} seed {r['seed']}: UA {r['ua']:.3f} "
          f"WA {r['wa']:.3f} on {r['n_test']}")


if __name__ == "__main__":
    main()
