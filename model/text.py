"""Transcript text as the model sees it: lower-case word tokens (optionally punctuation
marks too), IEMOCAP's bracketed non-speech markers ([LAUGHTER], [BREATHING], [GARBAGE])
left out."""

import re
from dataclasses import asdict, dataclass

_TOKEN_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
# The authors' code (didi/delta, IEmoCapTask): words and apostrophes, and five punctuation
# marks as tokens of their own.
_PUNCTUATION_TOKEN_RE = re.compile(r"[\w']+|[.,!?;]")
_MARKER_RE = re.compile(r"\[[^\]]*\]")


def tokenize(text: str | None, punctuation: bool = False) -> list[str]:
    if not text:
        return []
    pattern = _PUNCTUATION_TOKEN_RE if punctuation else _TOKEN_RE
    return pattern.findall(_MARKER_RE.sub(" ", text.lower()))


@dataclass(frozen=True)
class Tokenizer:
    """How a model's transcripts become tokens (the `model` config's punctuation_tokens and
    max_words). A model bundle keeps it beside the vocabulary, so serving tokenizes as
    training did."""

    punctuation: bool = False  # . , ! ? ; as tokens
    max_words: int = 0  # the first this many tokens of a transcript; 0: all

    def __call__(self, text: str | None) -> list[str]:
        """The tokens a model reads."""
        tokens = self.all_tokens(text)
        return tokens[:self.max_words] if self.max_words else tokens

    def all_tokens(self, text: str | None) -> list[str]:
        """Every token, however long the transcript (what a vocabulary is built from)."""
        return tokenize(text, self.punctuation)

    def to_dict(self) -> dict:
        """{} for today's tokenizer: bundles that use it are saved as they always were."""
        return {k: v for k, v in asdict(self).items() if v != getattr(Tokenizer(), k)}

    @classmethod
    def from_dict(cls, data: dict | None) -> "Tokenizer":
        return cls(**(data or {}))
