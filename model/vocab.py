"""The word vocabulary: built from training transcripts only, with padding and unknown."""

from collections import Counter
from pathlib import Path

import numpy as np

from model.spec import PAD_ID, UNK_ID, UNKNOWN_WORD_INITS
from model.text import Tokenizer

PAD, UNK = "<pad>", "<unk>"  # at ids PAD_ID and UNK_ID


class Vocabulary:
    def __init__(self, words: list[str], tokenizer: Tokenizer = Tokenizer()):
        self.words = [PAD, UNK] + [w for w in words if w not in (PAD, UNK)]
        self.ids = {w: i for i, w in enumerate(self.words)}
        self.tokenizer = tokenizer

    @classmethod
    def build(cls, transcripts, min_count: int = 1,
              tokenizer: Tokenizer = Tokenizer()) -> "Vocabulary":
        counts = Counter(t for text in transcripts for t in tokenizer.all_tokens(text))
        # Most frequent first, ties alphabetical: the same transcripts give the same ids.
        kept = sorted((w for w, n in counts.items() if n >= min_count),
                      key=lambda w: (-counts[w], w))
        return cls(kept, tokenizer)

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str | None) -> list[int]:
        ids = [self.ids.get(t, UNK_ID) for t in self.tokenizer(text)]
        return ids or [UNK_ID]  # an empty transcript still gives the model one (unknown) word

    def to_list(self) -> list[str]:
        return list(self.words)

    @classmethod
    def from_list(cls, words: list[str], tokenizer: Tokenizer = Tokenizer()) -> "Vocabulary":
        return cls(words[2:], tokenizer)


def load_word_vectors(path: Path, vocab: Vocabulary, dim: int,
                      unknown: str = "normal") -> tuple[np.ndarray, int]:
    """Rows of a GloVe-format text file (word v1 v2 ...) for the vocabulary's words; words
    it lacks keep a random vector: small (normal, sd 0.1) or, as the authors' code draws
    them, uniform in [-1, 1]. Returns (matrix, words found)."""
    if unknown not in UNKNOWN_WORD_INITS:
        raise ValueError(f"unknown words drawn {unknown!r}; known: {UNKNOWN_WORD_INITS}")
    rng = np.random.default_rng(0)
    if unknown == "uniform":
        matrix = rng.uniform(-1, 1, size=(len(vocab), dim)).astype(np.float32)
    else:
        matrix = rng.normal(0, 0.1, size=(len(vocab), dim)).astype(np.float32)
    matrix[PAD_ID] = 0
    found = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            parts = line.rstrip().split(" ")
            if len(parts) != dim + 1:
                raise ValueError(f"{path}:{number}: expected a word and {dim} numbers "
                                 f"(model.embed_dim), got {len(parts) - 1} numbers")
            row = vocab.ids.get(parts[0])
            if row is not None and row not in (PAD_ID, UNK_ID):
                matrix[row] = np.asarray(parts[1:], dtype=np.float32)
                found += 1
    return matrix, found
