"""Transcript text as the model sees it: lower-case word tokens, IEMOCAP's bracketed
non-speech markers ([LAUGHTER], [BREATHING], [GARBAGE]) left out."""

import re

_TOKEN_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_MARKER_RE = re.compile(r"\[[^\]]*\]")


def tokenize(text: str | None) -> list[str]:
    if not text:
        return []
    return _TOKEN_RE.findall(_MARKER_RE.sub(" ", text.lower()))
