"""The IEMOCAP release format: where files live, what their lines look like, what ids mean.

Both sides of the format live here, the parsers ingest uses and the formatters the sample
corpus generator writes with, so the two can never drift apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

RELEASE_DIRNAME = "IEMOCAP_full_release"
SESSIONS = (1, 2, 3, 4, 5)
# The file the sample-corpus generator (corpora/) leaves in every release it writes: its
# truth. No real release holds one, so ingest and the model card tell a generated corpus by it.
GENERATED_MARKER = "SAMPLE_CORPUS.json"

# The eleven consensus codes of the real release, with the counts it holds (10,039 in all).
LABEL_CODES = ("neu", "hap", "exc", "sad", "ang", "fru", "sur", "fea", "dis", "oth", "xxx")
FULL_RELEASE_CODE_COUNTS = {
    "neu": 1708, "hap": 595, "exc": 1041, "sad": 1084, "ang": 1103, "fru": 1849,
    "sur": 107, "fea": 40, "dis": 2, "oth": 3, "xxx": 2507,
}
FULL_RELEASE_UTTERANCES = sum(FULL_RELEASE_CODE_COUNTS.values())
# The standard 4-class set (exc merged into hap): 5,531 utterances.
FULL_RELEASE_4CLASS_COUNTS = {"neutral": 1708, "happy": 1636, "angry": 1103, "sad": 1084}

# Evaluators' category names as they appear on `C-E1:` lines.
CODE_TO_CATEGORY = {
    "neu": "Neutral", "hap": "Happiness", "exc": "Excited", "sad": "Sadness", "ang": "Anger",
    "fru": "Frustration", "sur": "Surprise", "fea": "Fear", "dis": "Disgust", "oth": "Other",
}

# A labelled utterance: Ses01F_impro01_F000, Ses01M_script01_1_M003, Ses03M_impro05a_F012.
UTT_ID_RE = re.compile(
    r"^Ses0(?P<session>[1-5])(?P<lead>[FM])_(?P<kind>impro|script)(?P<rest>[0-9a-z_]*?)"
    r"_(?P<gender>[FM])(?P<turn>\d{3})$"
)
# Turns without a label carry XX in place of their number (Ses01F_script01_1_MXX0).
UNLABELLED_TURN_RE = re.compile(r"^Ses0[1-5][FM]_\w+_[FM]XX\d+$")

LABEL_HEADER_RE = re.compile(
    r"^\[\s*(?P<start>\d+(?:\.\d+)?)\s*-\s*(?P<end>\d+(?:\.\d+)?)\s*\]\s+(?P<utt_id>\S+)\s+"
    r"(?P<code>\S+)\s+\[\s*(?P<v>\d+(?:\.\d+)?)\s*,\s*(?P<a>\d+(?:\.\d+)?)\s*,"
    r"\s*(?P<d>\d+(?:\.\d+)?)\s*\]\s*$"
)
# Annotator lines: categorical (C-E2:, C-F1:) and attribute (A-E3:) evaluations.
ANNOTATOR_LINE_RE = re.compile(r"^[CA]-[EFM]\d+:")
TRANSCRIPT_RE = re.compile(
    r"^(?P<utt_id>\S+)\s+\[(?P<start>\d+(?:\.\d+)?)-(?P<end>\d+(?:\.\d+)?)\]:\s?(?P<text>.*)$"
)
# Lines such as "M: [LAUGHTER]" or "F: Mm-hmm." are not utterances of the release.
SPEAKER_ONLY_LINE_RE = re.compile(r"^[FM]:\s")


class FormatError(ValueError):
    """A line or id that does not follow the IEMOCAP format."""


@dataclass(frozen=True)
class UttId:
    utt_id: str
    session: int
    dialog: str  # e.g. Ses01F_impro05a
    lead: str
    gender: str
    scripted: bool
    turn: int

    @property
    def speaker(self) -> str:
        return f"Ses0{self.session}{self.gender}"


def parse_utt_id(utt_id: str) -> UttId:
    m = UTT_ID_RE.match(utt_id)
    if not m:
        raise FormatError(f"not an IEMOCAP utterance id: {utt_id!r}")
    dialog = utt_id[: utt_id.rindex("_")]
    return UttId(
        utt_id=utt_id,
        session=int(m["session"]),
        dialog=dialog,
        lead=m["lead"],
        gender=m["gender"],
        scripted=m["kind"] == "script",
        turn=int(m["turn"]),
    )


@dataclass(frozen=True)
class LabelBlock:
    utt_id: str
    start: float
    end: float
    code: str
    valence: float
    arousal: float
    dominance: float


def _match(pattern: re.Pattern, line: str, what: str) -> re.Match:
    m = pattern.match(line.rstrip("\r\n"))
    if not m:
        raise FormatError(f"not {what}: {line.strip()!r}")
    return m


def parse_label_header(line: str) -> LabelBlock:
    m = _match(LABEL_HEADER_RE, line, "a label block header")
    return LabelBlock(
        utt_id=m["utt_id"], start=float(m["start"]), end=float(m["end"]), code=m["code"],
        valence=float(m["v"]), arousal=float(m["a"]), dominance=float(m["d"]),
    )


@dataclass(frozen=True)
class TranscriptLine:
    utt_id: str
    start: float
    end: float
    text: str


def parse_transcript_line(line: str) -> TranscriptLine:
    m = _match(TRANSCRIPT_RE, line, "a transcription line")
    return TranscriptLine(m["utt_id"], float(m["start"]), float(m["end"]), m["text"].strip())


def read_text(path: Path) -> tuple[str, str]:
    """Return (text, encoding). The release is mostly ASCII; some files are latin-1."""
    raw = path.read_bytes()
    try:
        # utf-8-sig: files saved by some Windows editors start with a byte-order mark.
        return raw.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        return raw.decode("latin-1"), "latin-1"


def find_release_root(path: Path) -> Path:
    """Accept the release root (holding Session1..5) or a folder holding IEMOCAP_full_release/."""
    if not path.exists():
        raise FileNotFoundError(f"corpus path does not exist: {path}")
    if not path.is_dir():
        raise FormatError(f"corpus path is not a folder: {path}")
    for candidate in (path, path / RELEASE_DIRNAME):
        if any((candidate / f"Session{s}").is_dir() for s in SESSIONS):
            return candidate
    raise FormatError(
        f"not an IEMOCAP release: {path} holds neither Session1..Session5 nor {RELEASE_DIRNAME}/"
    )


# Paths inside a session folder.
def label_dir(session_dir: Path) -> Path:
    return session_dir / "dialog" / "EmoEvaluation"


def transcript_dir(session_dir: Path) -> Path:
    return session_dir / "dialog" / "transcriptions"


def wav_dir(session_dir: Path) -> Path:
    return session_dir / "sentences" / "wav"


def wdseg_dir(session_dir: Path) -> Path:
    return session_dir / "sentences" / "ForcedAlignment"


def is_release_file(path: Path) -> bool:
    # Archives unpacked on macOS carry "._" resource-fork twins of every file.
    return not path.name.startswith(".")


# ---- writing, for the sample corpus generator -------------------------------------------

LABEL_FILE_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"


def format_label_header(block: LabelBlock) -> str:
    return (
        f"[{block.start:.4f} - {block.end:.4f}]\t{block.utt_id}\t{block.code}\t"
        f"[{block.valence:.4f}, {block.arousal:.4f}, {block.dominance:.4f}]\n"
    )


def format_transcript_line(utt_id: str, start: float, end: float, text: str) -> str:
    return f"{utt_id} [{start:08.4f}-{end:08.4f}]: {text}\n"


# Tokens a forced alignment gives to things that are no transcript word.
_WDSEG_NON_WORDS = re.compile(r"^(<s>|</s>|<sil>|\+\+.*\+\+|\[.*\])$", re.IGNORECASE)


def parse_wdseg(text: str) -> list[tuple[int, int, str]]:
    """(first frame, last frame, word) of each transcript word in a .wdseg file, frames at
    100 per second; silences, <s>, </s> and ++NOISE++ left out, and the pronunciation
    variant mark the aligner appends ("THE(2)") taken off."""
    words = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 4 or not parts[0].isdigit() or not parts[1].isdigit():
            continue
        word = re.sub(r"\(\d+\)$", "", parts[3])
        if not _WDSEG_NON_WORDS.match(word):
            words.append((int(parts[0]), int(parts[1]), word.lower()))
    return words


def format_wdseg(words: list[tuple[int, int, str]], score_seed: int) -> str:
    """Forced-alignment word segmentation: frame numbers at 100 frames per second."""
    lines = [" SFrm  EFrm    SegAScr Word"]
    total = 0
    for i, (start_frame, end_frame, word) in enumerate(words):
        score = -((start_frame * 7919 + end_frame * 104_729 + score_seed + i) % 90_000 + 1000)
        total += score
        lines.append(f"{start_frame:5d} {end_frame:5d} {score:10d} {word}")
    lines.append(f" Total score:      {total}")
    lines.append(" End of Utterance Reached")
    return "\n".join(lines) + "\n"
