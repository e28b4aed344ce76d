"""Ingest: an IEMOCAP release (real or generated) -> manifest.parquet + ingest_report.json.

Every label block becomes a manifest row, whether or not its code is in the class set
(label is null then) and whether or not its transcript or wav was found (those fields are
null then): nothing is dropped here. What is odd about the corpus is listed, with a reason per
utterance id, in the report; the validation step decides what is fatal.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import soundfile

from components import iemocap, outputs
from components.config import IngestConfig
from components.errors import CorpusError

# The report's findings, in its order. Each problem is an entry naming the utterance or the
# line, for validation to judge; the files are only noted.
PROBLEM_KINDS = ("labels_without_transcript", "transcripts_without_label", "labels_without_wav",
                 "wavs_without_label", "unreadable_wavs", "unparseable_lines",
                 "bad_utterance_ids", "duplicate_ids", "unknown_label_codes",
                 "misplaced_utterances")
NOTED_FILES = ("latin1_files", "ignored_files")


class Findings:
    """What ingest noticed, each entry naming the utterance or the line: one list attribute
    per name in PROBLEM_KINDS and NOTED_FILES, and a count of non_utterance_lines."""

    def __init__(self):
        for kind in PROBLEM_KINDS + NOTED_FILES:
            setattr(self, kind, [])
        self.non_utterance_lines = 0

    def problem_count(self) -> int:
        return sum(len(getattr(self, kind)) for kind in PROBLEM_KINDS)


@dataclass
class IngestResult:
    manifest: pd.DataFrame
    report: dict
    manifest_path: Path
    report_path: Path


def _text_files(folder: Path, findings: Findings, root: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    files = []
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue  # e.g. EmoEvaluation/Categorical/, per-evaluator files
        if path.suffix == ".txt" and iemocap.is_release_file(path):
            files.append(path)
        else:
            findings.ignored_files.append(str(path.relative_to(root)))
    return files


def _read(path: Path, findings: Findings, root: Path) -> list[str]:
    text, encoding = iemocap.read_text(path)
    if encoding != "utf-8":
        findings.latin1_files.append(str(path.relative_to(root)))
    return text.splitlines()


def _parse_labels(session_dir: Path, root: Path, findings: Findings,
                  ) -> list[tuple[iemocap.LabelBlock, str]]:
    blocks = []
    for path in _text_files(iemocap.label_dir(session_dir), findings, root):
        rel = str(path.relative_to(root))
        for number, line in enumerate(_read(path, findings, root), start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith("%") or iemocap.ANNOTATOR_LINE_RE.match(
                    stripped):
                continue
            try:
                blocks.append((iemocap.parse_label_header(stripped), rel))
            except iemocap.FormatError:
                findings.unparseable_lines.append(
                    {"file": rel, "line": number, "text": stripped[:200],
                     "reason": "neither a label block header nor an annotator line"})
    return blocks


def _parse_transcripts(session_dir: Path, root: Path, findings: Findings,
                       ) -> dict[str, tuple[iemocap.TranscriptLine, str]]:
    lines: dict[str, tuple[iemocap.TranscriptLine, str]] = {}
    for path in _text_files(iemocap.transcript_dir(session_dir), findings, root):
        rel = str(path.relative_to(root))
        for number, line in enumerate(_read(path, findings, root), start=1):
            stripped = line.strip()
            if not stripped:
                continue
            if iemocap.SPEAKER_ONLY_LINE_RE.match(stripped):
                findings.non_utterance_lines += 1
                continue
            try:
                parsed = iemocap.parse_transcript_line(stripped)
            except iemocap.FormatError:
                findings.unparseable_lines.append(
                    {"file": rel, "line": number, "text": stripped[:200],
                     "reason": "not a transcription line"})
                continue
            if iemocap.UNLABELLED_TURN_RE.match(parsed.utt_id):
                findings.non_utterance_lines += 1
                continue
            if parsed.utt_id in lines:
                findings.duplicate_ids.append(
                    {"utt_id": parsed.utt_id, "file": rel, "reason": "transcribed twice"})
                continue
            lines[parsed.utt_id] = (parsed, rel)
    return lines


def _scan_wavs(session_dir: Path, root: Path, findings: Findings,
               ) -> tuple[dict[str, Path], dict[str, Path]]:
    wavs, wdsegs = {}, {}
    for folder, suffix, found in ((iemocap.wav_dir(session_dir), ".wav", wavs),
                                  (iemocap.wdseg_dir(session_dir), ".wdseg", wdsegs)):
        if not folder.is_dir():
            continue
        for dialog_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            for path in sorted(dialog_dir.iterdir()):
                if path.suffix == suffix and iemocap.is_release_file(path):
                    found[path.stem] = path.resolve()
                elif suffix == ".wav":
                    findings.ignored_files.append(str(path.relative_to(root)))
    return wavs, wdsegs


def _wav_info(path: Path) -> tuple[float | None, int | None, str | None]:
    try:
        info = soundfile.info(str(path))
    except Exception as e:  # libsndfile reports every kind of damage as a RuntimeError
        return None, None, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    if info.frames == 0:
        return 0.0, info.samplerate, "no audio frames"
    return info.frames / info.samplerate, info.samplerate, None


def scan(corpus: Path, config: IngestConfig) -> tuple[pd.DataFrame, dict]:
    """Read the release under `corpus`; return the manifest and the report (nothing written)."""
    try:
        root = iemocap.find_release_root(Path(corpus))
    except (FileNotFoundError, iemocap.FormatError) as e:
        raise CorpusError(str(e)) from None
    root = root.resolve()
    findings = Findings()
    label_map = config.label_map()
    rows: list[dict] = []
    seen: dict[str, str] = {}
    sessions_found = []
    for session in iemocap.SESSIONS:
        session_dir = root / f"Session{session}"
        if session_dir.is_dir():
            sessions_found.append(session)
            rows += _session_rows(session, session_dir, root, findings, label_map, seen)

    manifest = pd.DataFrame(rows, columns=outputs.MANIFEST_SCHEMA.names)
    manifest = manifest.sort_values(["session", "dialog", "start", "utt_id"], kind="stable")
    manifest = manifest.reset_index(drop=True)
    report = _report(root, sessions_found, manifest, findings, config)
    return manifest, report


def _session_rows(session: int, session_dir: Path, root: Path, findings: Findings,
                  label_map: dict[str, str], seen: dict[str, str]) -> list[dict]:
    """The session folder's manifest rows: one per label block whose utterance id parses.
    `seen` maps the ids met so far, in any session, to the label file that first had them."""
    blocks = _parse_labels(session_dir, root, findings)
    transcripts = _parse_transcripts(session_dir, root, findings)
    wavs, wdsegs = _scan_wavs(session_dir, root, findings)
    rows = []
    for block, rel in blocks:
        try:
            uid = iemocap.parse_utt_id(block.utt_id)
        except iemocap.FormatError as e:
            findings.bad_utterance_ids.append(
                {"utt_id": block.utt_id, "file": rel, "reason": str(e)})
            continue
        _check_block(block, uid, rel, session, seen, findings)
        transcript = transcripts.get(block.utt_id)
        if transcript is None:
            findings.labels_without_transcript.append(
                {"utt_id": block.utt_id, "file": rel, "reason": "no transcription line"})
        wav = wavs.get(block.utt_id)
        duration, rate = _block_audio(block, rel, wav, root, findings)
        wdseg = wdsegs.get(block.utt_id)
        rows.append({
            # The folder decides the session (and so the cross-validation fold); the id
            # decides the speaker. Validation catches a speaker found in two sessions.
            "utt_id": block.utt_id, "session": session, "dialog": uid.dialog,
            "speaker": uid.speaker, "gender": uid.gender, "scripted": uid.scripted,
            "start": block.start, "end": block.end, "label_raw": block.code,
            "label": label_map.get(block.code),
            "valence": block.valence, "arousal": block.arousal,
            "dominance": block.dominance,
            "transcript": transcript[0].text if transcript else None,
            "wav_path": str(wav) if wav else None,
            "duration_s": duration, "sample_rate": rate,
            "wdseg_path": str(wdseg) if wdseg else None,
        })
    _note_unlabelled({row["utt_id"] for row in rows}, transcripts, wavs, root, findings)
    return rows


def _check_block(block: iemocap.LabelBlock, uid: iemocap.UttId, rel: str, session: int,
                 seen: dict[str, str], findings: Findings) -> None:
    """What is odd about a label block whose id parses; the block is kept all the same."""
    if uid.session != session:
        findings.misplaced_utterances.append(
            {"utt_id": block.utt_id, "file": rel,
             "reason": f"id names session {uid.session} but lies in Session{session}"})
    if block.utt_id in seen:
        findings.duplicate_ids.append(
            {"utt_id": block.utt_id, "file": rel,
             "reason": f"label block repeated (first in {seen[block.utt_id]})"})
    seen.setdefault(block.utt_id, rel)
    if block.code not in iemocap.LABEL_CODES:
        findings.unknown_label_codes.append(
            {"utt_id": block.utt_id, "file": rel, "code": block.code,
             "reason": f"unknown IEMOCAP code {block.code!r}"})


def _block_audio(block: iemocap.LabelBlock, rel: str, wav: Path | None, root: Path,
                 findings: Findings) -> tuple[float | None, int | None]:
    """(duration_s, sample_rate) of the block's wav; None for what could not be read."""
    if wav is None:
        findings.labels_without_wav.append(
            {"utt_id": block.utt_id, "file": rel, "reason": "no wav file"})
        return None, None
    duration, rate, problem = _wav_info(wav)
    if problem:
        findings.unreadable_wavs.append(
            {"utt_id": block.utt_id, "file": str(wav.relative_to(root)), "reason": problem})
    return duration, rate


def _note_unlabelled(labelled: set[str], transcripts: dict[str, tuple], wavs: dict[str, Path],
                     root: Path, findings: Findings) -> None:
    """Transcription lines and wavs of the session that no label block names."""
    for utt_id, (_, rel) in sorted(transcripts.items()):
        if utt_id not in labelled:
            findings.transcripts_without_label.append(
                {"utt_id": utt_id, "file": rel, "reason": "no label block"})
    for utt_id, path in sorted(wavs.items()):
        if utt_id not in labelled:
            findings.wavs_without_label.append(
                {"utt_id": utt_id, "file": str(path.relative_to(root)),
                 "reason": "no label block"})


def _counts(series: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in sorted(Counter(series.dropna()).items())}


def _report(root: Path, sessions: list[int], manifest: pd.DataFrame, findings: Findings,
            config: IngestConfig) -> dict:
    by_session = defaultdict(dict)
    for (session, label), n in manifest.groupby(["session", "label"]).size().items():
        by_session[str(session)][str(label)] = int(n)
    generated = (root / iemocap.GENERATED_MARKER).is_file()
    report = {
        "corpus_root": str(root),
        "generated_sample": generated,
        "sessions_found": sessions,
        "classes": list(config.classes),
        "merge_excited": config.merge_excited,
        "n_label_blocks": int(len(manifest)),
        "n_labelled": int(manifest["label"].notna().sum()),
        "n_outside_class_set": int(manifest["label"].isna().sum()),
        "counts": {
            "label": _counts(manifest["label"]),
            "label_raw": _counts(manifest["label_raw"]),
            "session": _counts(manifest["session"]),
            "label_by_session": dict(sorted(by_session.items())),
        },
        "total_audio_seconds": round(float(manifest["duration_s"].fillna(0).sum()), 3),
        "problem_count": findings.problem_count(),
        "findings": vars(findings),
    }
    report["full_release_check"] = _full_release_check(report, generated, config)
    return report


def _full_release_check(report: dict, generated: bool, config: IngestConfig) -> dict:
    """The real release holds 5,531 utterances in the standard 4-class set; say when it doesn't."""
    standard = (sorted(config.classes) == sorted(iemocap.FULL_RELEASE_4CLASS_COUNTS)
                and config.merge_excited)
    applies = not generated and report["sessions_found"] == list(iemocap.SESSIONS) and standard
    if not applies:
        return {"applies": False}
    expected = iemocap.FULL_RELEASE_4CLASS_COUNTS
    actual = {c: report["counts"]["label"].get(c, 0) for c in expected}
    return {"applies": True, "expected": expected, "actual": actual,
            "expected_total": sum(expected.values()), "actual_total": sum(actual.values()),
            "ok": actual == expected}


def run(corpus: Path, out_dir: Path, config: IngestConfig | None = None) -> IngestResult:
    """Ingest `corpus` (release root or its parent) into `out_dir`."""
    config = config or IngestConfig()
    manifest, report = scan(Path(corpus), config)
    out = outputs.Ingested(Path(out_dir))
    out.folder.mkdir(parents=True, exist_ok=True)
    outputs.write_manifest(manifest, out.manifest_path)
    out.report_path.write_text(json.dumps(report, indent=1) + "\n")
    return IngestResult(manifest, report, out.manifest_path, out.report_path)


def summary_lines(report: dict) -> list[str]:
    """Counts per label and session, as the CLI and the pipeline print them."""
    classes = report["classes"]
    sessions = [str(s) for s in report["sessions_found"]]
    by_session = report["counts"]["label_by_session"]
    width = max(9, *(len(c) for c in classes))
    head = f"{'label':<{width}}" + "".join(f" {'S' + s:>6}" for s in sessions) + f" {'total':>7}"
    lines = [f"corpus {report['corpus_root']}: {report['n_label_blocks']} label blocks, "
             f"{report['n_labelled']} in the class set, {report['n_outside_class_set']} outside",
             head]
    for c in classes:
        cells = [by_session.get(s, {}).get(c, 0) for s in sessions]
        lines.append(f"{c:<{width}}" + "".join(f" {n:>6}" for n in cells) + f" {sum(cells):>7}")
    session_totals = [report["counts"]["session"].get(s, 0) for s in sessions]
    lines.append(f"{'all codes':<{width}}" + "".join(f" {n:>6}" for n in session_totals)
                 + f" {sum(session_totals):>7}")
    raw = report["counts"]["label_raw"]
    lines.append("codes: " + ", ".join(f"{k} {v}" for k, v in raw.items()))
    findings = report["findings"]
    problems = [f"{k.replace('_', ' ')}: {len(v)}" for k, v in findings.items()
                if isinstance(v, list) and v and k not in ("ignored_files",)]
    if problems:
        lines.append("findings: " + "; ".join(problems))
    check = report["full_release_check"]
    if check.get("applies") and not check["ok"]:
        lines.append(
            f"WARNING: this looks like the full IEMOCAP release but its 4-class counts "
            f"{check['actual']} (total {check['actual_total']}) differ from the standard "
            f"{check['expected']} (total {check['expected_total']})")
    return lines
