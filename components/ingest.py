"""Ingest: an IEMOCAP release (real or generated) -> manifest.parquet + ingest_report.json.

Every label block becomes a manifest row, whether or not its code is in the class set
(label is null then) and whether or not its transcript or wav was found (those fields are
null then): nothing is dropped here. What is odd about the corpus is listed, with a reason per
utterance id, in the report; the validation step decides what is fatal.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile

from components import iemocap
from components.config import IngestConfig
from components.errors import CorpusError

MANIFEST_FILENAME = "manifest.parquet"
REPORT_FILENAME = "ingest_report.json"

MANIFEST_SCHEMA = pa.schema([
    ("utt_id", pa.string()),
    ("session", pa.int64()),
    ("dialog", pa.string()),
    ("speaker", pa.string()),
    ("gender", pa.string()),
    ("scripted", pa.bool_()),
    ("start", pa.float64()),
    ("end", pa.float64()),
    ("label_raw", pa.string()),
    ("label", pa.string()),
    ("valence", pa.float64()),
    ("arousal", pa.float64()),
    ("dominance", pa.float64()),
    ("transcript", pa.string()),
    ("wav_path", pa.string()),
    ("duration_s", pa.float64()),
    ("sample_rate", pa.int64()),
    ("wdseg_path", pa.string()),
])


@dataclass
class Findings:
    """What ingest noticed, each entry naming the utterance or the line."""

    labels_without_transcript: list[dict] = field(default_factory=list)
    transcripts_without_label: list[dict] = field(default_factory=list)
    labels_without_wav: list[dict] = field(default_factory=list)
    wavs_without_label: list[dict] = field(default_factory=list)
    unreadable_wavs: list[dict] = field(default_factory=list)
    unparseable_lines: list[dict] = field(default_factory=list)
    bad_utterance_ids: list[dict] = field(default_factory=list)
    duplicate_ids: list[dict] = field(default_factory=list)
    unknown_label_codes: list[dict] = field(default_factory=list)
    misplaced_utterances: list[dict] = field(default_factory=list)
    latin1_files: list[str] = field(default_factory=list)
    ignored_files: list[str] = field(default_factory=list)
    non_utterance_lines: int = 0

    def problem_count(self) -> int:
        return sum(len(v) for k, v in vars(self).items()
                   if isinstance(v, list) and k not in ("latin1_files", "ignored_files"))


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


def _parse_labels(session: int, session_dir: Path, root: Path, findings: Findings,
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
        if not session_dir.is_dir():
            continue
        sessions_found.append(session)
        blocks = _parse_labels(session, session_dir, root, findings)
        transcripts = _parse_transcripts(session_dir, root, findings)
        wavs, wdsegs = _scan_wavs(session_dir, root, findings)
        labelled = set()
        for block, rel in blocks:
            try:
                uid = iemocap.parse_utt_id(block.utt_id)
            except iemocap.FormatError as e:
                findings.bad_utterance_ids.append(
                    {"utt_id": block.utt_id, "file": rel, "reason": str(e)})
                continue
            if uid.session != session:
                findings.misplaced_utterances.append(
                    {"utt_id": block.utt_id, "file": rel,
                     "reason": f"id names session {uid.session} but lies in Session{session}"})
            if block.utt_id in seen:
                findings.duplicate_ids.append(
                    {"utt_id": block.utt_id, "file": rel,
                     "reason": f"label block repeated (first in {seen[block.utt_id]})"})
            seen.setdefault(block.utt_id, rel)
            labelled.add(block.utt_id)
            if block.code not in iemocap.LABEL_CODES:
                findings.unknown_label_codes.append(
                    {"utt_id": block.utt_id, "file": rel, "code": block.code,
                     "reason": f"unknown IEMOCAP code {block.code!r}"})
            transcript = transcripts.get(block.utt_id)
            if transcript is None:
                findings.labels_without_transcript.append(
                    {"utt_id": block.utt_id, "file": rel, "reason": "no transcription line"})
            wav = wavs.get(block.utt_id)
            duration = rate = None
            if wav is None:
                findings.labels_without_wav.append(
                    {"utt_id": block.utt_id, "file": rel, "reason": "no wav file"})
            else:
                duration, rate, problem = _wav_info(wav)
                if problem:
                    findings.unreadable_wavs.append(
                        {"utt_id": block.utt_id, "file": str(wav.relative_to(root)),
                         "reason": problem})
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
        for utt_id, (line, rel) in sorted(transcripts.items()):
            if utt_id not in labelled:
                findings.transcripts_without_label.append(
                    {"utt_id": utt_id, "file": rel, "reason": "no label block"})
        for utt_id, path in sorted(wavs.items()):
            if utt_id not in labelled:
                findings.wavs_without_label.append(
                    {"utt_id": utt_id, "file": str(path.relative_to(root)),
                     "reason": "no label block"})

    manifest = pd.DataFrame(rows, columns=MANIFEST_SCHEMA.names)
    manifest = manifest.sort_values(["session", "dialog", "start", "utt_id"], kind="stable")
    manifest = manifest.reset_index(drop=True)
    report = _report(root, sessions_found, manifest, findings, config)
    return manifest, report


def _counts(series: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in sorted(Counter(series.dropna()).items())}


def _report(root: Path, sessions: list[int], manifest: pd.DataFrame, findings: Findings,
            config: IngestConfig) -> dict:
    by_session = defaultdict(dict)
    for (session, label), n in manifest.groupby(["session", "label"]).size().items():
        by_session[str(session)][str(label)] = int(n)
    generated = (root / "SAMPLE_CORPUS.json").is_file()
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


def write_manifest(manifest: pd.DataFrame, path: Path) -> None:
    table = pa.Table.from_pandas(manifest, schema=MANIFEST_SCHEMA, preserve_index=False)
    pq.write_table(table, path)


def read_manifest(path: Path) -> pd.DataFrame:
    return pq.read_table(path).to_pandas()


def run(corpus: Path, out_dir: Path, config: IngestConfig | None = None) -> IngestResult:
    """Ingest `corpus` (release root or its parent) into `out_dir`."""
    config = config or IngestConfig()
    manifest, report = scan(Path(corpus), config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / MANIFEST_FILENAME
    report_path = out_dir / REPORT_FILENAME
    write_manifest(manifest, manifest_path)
    report_path.write_text(json.dumps(report, indent=1) + "\n")
    return IngestResult(manifest, report, manifest_path, report_path)


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
