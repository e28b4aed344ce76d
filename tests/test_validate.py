"""The data gate: faults injected into generated corpora get the right severity and reason,
and manifest rows always equal kept + quarantined."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import soundfile

from components import ingest, outputs, validate
from components.config import ValidateConfig
from components.errors import UserError
from components.outputs import Ingested, Validated
from conftest import assert_one_line_error, emoalign
from test_ingest import first_utt, label_file_of, transcript_file_of, wav_of

CLASSES = ["neutral", "happy", "angry", "sad"]


def gate(corpus, tmp_path, **settings):
    """Ingest then validate; the result, or the ValidationError and the report it left."""
    ingest.run(corpus, tmp_path / "ingest")
    cfg = ValidateConfig(**settings)
    return validate.run(tmp_path / "ingest", tmp_path / "validated", CLASSES, cfg)


def stopped(corpus, tmp_path, **settings) -> tuple[str, dict]:
    with pytest.raises(validate.ValidationError) as failure:
        gate(corpus, tmp_path, **settings)
    report = json.loads((tmp_path / "validated" / Validated.REPORT).read_text())
    assert not report["passed"]
    assert str(tmp_path / "validated" / Validated.HTML) in str(failure.value)
    assert "\n" not in str(failure.value)
    return str(failure.value), report


def quarantined(result) -> dict[str, str]:
    return dict(zip(result.quarantine["utt_id"], result.quarantine["reasons"]))


def reconciles(result):
    c = result.report["counts"]
    assert c["manifest_rows"] == c["kept"] + c["quarantined"]
    assert c["kept"] == len(result.manifest) and c["quarantined"] == len(result.quarantine)
    assert not set(result.manifest["utt_id"]) & set(result.quarantine["utt_id"])
    kept = outputs.read_manifest(result.out_dir / Validated.MANIFEST)
    assert len(kept) == c["kept"]
    assert len(pd.read_csv(result.out_dir / Validated.QUARANTINE)) == c["quarantined"]


def test_a_clean_corpus_passes(small_corpus, tmp_path):
    result = gate(small_corpus, tmp_path)
    assert result.passed and result.report["errors"] == [] and len(result.quarantine) == 0
    reconciles(result)
    checks = {x["check"] for x in result.report["expectations"]}
    assert {"schema", "unique_id", "has_transcript", "duration_bounds", "sample_rate",
            "speaker_format", "start_before_end", "vad_range", "speaker_leakage",
            "class_share:sad"} <= checks
    assert all(x["success"] for x in result.report["expectations"])
    gx_result = json.loads((result.out_dir / Validated.GX_RESULT).read_text())
    assert gx_result["success"] is True and len(gx_result["results"]) >= 20
    page = (result.out_dir / Validated.HTML).read_text()
    assert "PASSED" in page and "expect_column_values_to_be_unique" in page
    stats = json.loads((result.out_dir / Validated.STATS).read_text())
    assert stats["n_labelled"] == int(result.manifest["label"].notna().sum())
    assert abs(sum(stats["class_shares"].values()) - 1) < 1e-9


def test_truncated_empty_resampled_and_missing_wavs_are_quarantined(corpus_copy, tmp_path):
    truncated, empty = first_utt(corpus_copy, 1), first_utt(corpus_copy, 2)
    stereo, missing = first_utt(corpus_copy, 3), first_utt(corpus_copy, 4)
    data = wav_of(corpus_copy, truncated).read_bytes()
    wav_of(corpus_copy, truncated).write_bytes(data[: len(data) // 2])
    wav_of(corpus_copy, empty).write_bytes(b"")
    audio, rate = soundfile.read(wav_of(corpus_copy, stereo))
    n = int(len(audio) * 44100 / rate)
    resampled = np.interp(np.linspace(0, len(audio) - 1, n), np.arange(len(audio)), audio)
    soundfile.write(wav_of(corpus_copy, stereo), np.stack([resampled, resampled], 1), 44100)
    wav_of(corpus_copy, missing).unlink()

    result = gate(corpus_copy, tmp_path)
    reasons = quarantined(result)
    assert set(reasons) == {truncated, empty, stereo, missing}
    assert "wav lasts" in reasons[truncated] and "label block" in reasons[truncated]
    assert reasons[empty].startswith("unreadable wav")
    assert "sample rate 44100 Hz, expected 16000" in reasons[stereo]
    assert "2 channels, expected 1" in reasons[stereo]
    assert reasons[missing] == "no wav file"
    reconciles(result)
    assert result.report["passed"] and "4 utterances quarantined" in result.report["warnings"]


def test_silent_clipped_and_nan_audio(corpus_copy, tmp_path):
    silent, clipped, nan = (first_utt(corpus_copy, s) for s in (1, 2, 3))
    for utt, make in ((silent, lambda x: x * 0.0001), (clipped, lambda x: np.clip(x * 60, -1, 1)),
                      (nan, None)):
        audio, rate = soundfile.read(wav_of(corpus_copy, utt))
        if make is None:
            audio = audio.astype(np.float32)
            audio[100] = np.nan
            soundfile.write(wav_of(corpus_copy, utt), audio, rate, subtype="FLOAT")
        else:
            soundfile.write(wav_of(corpus_copy, utt), make(audio), rate, subtype="PCM_16")
    reasons = quarantined(gate(corpus_copy, tmp_path))
    assert reasons[silent].startswith("silent: RMS")
    assert reasons[clipped].startswith("clipped:")
    assert reasons[nan] == "NaN or infinite samples"


def test_missing_transcript_and_duplicated_id(corpus_copy, tmp_path):
    no_text = first_utt(corpus_copy, 5, code="ang")
    path = transcript_file_of(corpus_copy, no_text)
    path.write_text("".join(x for x in path.read_text().splitlines(keepends=True)
                            if not x.startswith(no_text + " ")))
    twice = first_utt(corpus_copy, 3)
    label = label_file_of(corpus_copy, twice)
    block = next(b for b in label.read_text().split("\n\n") if f"\t{twice}\t" in b)
    label.write_text(label.read_text() + block.strip() + "\n\n")

    result = gate(corpus_copy, tmp_path)
    reasons = quarantined(result)
    assert reasons[no_text] == "labelled utterance without transcript"
    assert (result.quarantine["utt_id"] == twice).sum() == 2  # both copies: which is right?
    assert all("duplicate utt_id" in r for u, r in zip(result.quarantine["utt_id"],
                                                        result.quarantine["reasons"])
               if u == twice)
    reconciles(result)


def test_junk_line_and_latin1_bytes_are_reported_not_lost(corpus_copy, tmp_path):
    victim = first_utt(corpus_copy, 2)
    label = label_file_of(corpus_copy, victim)
    label.write_text(label.read_text().replace(f"\t{victim}\t", f"\t{victim} ???\t", 1))
    utt = first_utt(corpus_copy, 4)
    path = transcript_file_of(corpus_copy, utt)
    path.write_bytes(path.read_text().replace(f"{utt} [", f"{utt} [", 1)
                     .replace("]: ", "]: Caf\xe9 ", 1).encode("latin-1"))
    result = gate(corpus_copy, tmp_path)
    assert result.passed
    ingest_report = json.loads((tmp_path / "ingest" / Ingested.REPORT).read_text())
    assert [x["utt_id"] for x in ingest_report["findings"]["wavs_without_label"]] == [victim]
    assert len(ingest_report["findings"]["unparseable_lines"]) == 1
    assert ingest_report["findings"]["latin1_files"]
    assert result.report["ingest_findings"] == {
        "unparseable_lines": 1, "transcripts_without_label": 1, "wavs_without_label": 1}
    assert any(w.startswith("ingest found: 1 unparseable lines") for w in
               result.report["warnings"])
    message, _ = stopped(corpus_copy, tmp_path / "strict", strict=True)
    assert "ingest found" in message


def test_a_class_removed_entirely_stops_the_run(corpus_copy, tmp_path):
    for path in corpus_copy.glob("Session*/dialog/EmoEvaluation/*.txt"):
        blocks = path.read_text().split("\n\n")
        path.write_text("\n\n".join(b for b in blocks if "\tsad\t" not in b))
    message, report = stopped(corpus_copy, tmp_path)
    assert "class 'sad' is missing from the labelled rows" in message
    check = next(x for x in report["expectations"] if x["check"] == "class_share:sad")
    assert check["severity"] == "error" and not check["success"]


def test_a_rare_class_below_the_share_stops_the_run(small_corpus, tmp_path):
    message, _ = stopped(small_corpus, tmp_path, min_class_share=0.24)
    assert "below the minimum 24.0%" in message


def test_a_leaking_speaker_stops_the_run(corpus_copy, tmp_path):
    utt = first_utt(corpus_copy, 1)
    moved = "Session2"
    for src in (label_file_of(corpus_copy, utt), transcript_file_of(corpus_copy, utt)):
        dst = corpus_copy / moved / src.relative_to(corpus_copy / "Session1")
        shutil.move(src, dst)
    src_wavs = wav_of(corpus_copy, utt).parent
    shutil.move(src_wavs, corpus_copy / moved / src_wavs.relative_to(corpus_copy / "Session1"))
    message, report = stopped(corpus_copy, tmp_path)
    assert "speaker leakage" in message


def test_too_many_bad_files_stops_the_run(corpus_copy, tmp_path):
    for wav in list(corpus_copy.glob("Session[12]/sentences/wav/*/*.wav")):
        wav.write_bytes(b"RIFF")
    message, report = stopped(corpus_copy, tmp_path)
    assert "too many bad files" in message
    assert report["counts"]["manifest_rows"] == (report["counts"]["kept"]
                                                 + report["counts"]["quarantined"])


def test_strict_turns_quarantine_into_an_error(corpus_copy, tmp_path):
    wav_of(corpus_copy, first_utt(corpus_copy, 1)).write_bytes(b"")
    message, report = stopped(corpus_copy, tmp_path, strict=True)
    assert "strict: 1 utterances failed warning-level checks" in message


def test_broken_schema_is_an_error(small_corpus, tmp_path):
    ingest.run(small_corpus, tmp_path / "ingest")
    manifest = outputs.read_manifest(tmp_path / "ingest" / Ingested.MANIFEST)
    manifest.drop(columns=["transcript"]).to_parquet(tmp_path / "broken.parquet")
    with pytest.raises(validate.ValidationError, match="manifest schema broken"):
        validate.run(tmp_path / "broken.parquet", tmp_path / "out", CLASSES, ValidateConfig())


def test_drift_against_a_reference(small_corpus, tmp_path):
    reference = gate(small_corpus, tmp_path / "ref").out_dir / Validated.STATS
    same = validate.run(tmp_path / "ref" / "ingest", tmp_path / "same", CLASSES,
                        ValidateConfig(),
                        validate.DriftReference.named(str(reference)))
    assert [d["status"] for d in same.report["drift"]] == ["ok"] * 4
    assert [d["value"] for d in same.report["drift"]] == [0.0] * 4

    # A corpus that lost most of its neutral utterances and speaks new words.
    manifest = outputs.read_manifest(tmp_path / "ref" / "ingest" / Ingested.MANIFEST)
    neutral = manifest.index[manifest["label"] == "neutral"]
    drifted = manifest.drop(index=neutral[1:]).copy()
    drifted["transcript"] = drifted["transcript"].str.replace(
        r"\w+", lambda m: m.group(0) + "x", regex=True)
    drifted.to_parquet(tmp_path / "drifted.parquet")
    with pytest.raises(validate.ValidationError, match="drift in class_share"):
        validate.run(tmp_path / "drifted.parquet", tmp_path / "d", CLASSES, ValidateConfig(),
                     reference=validate.DriftReference.named(str(reference)))
    report = json.loads((tmp_path / "d" / Validated.REPORT).read_text())
    status = {d["metric"]: d["status"] for d in report["drift"]}
    assert status["class_share"] == "fail" and status["oov"] == "fail"


def test_drift_metrics():
    ref = {"class_shares": {"a": 0.5, "b": 0.5}, "duration_quantiles": list(
        np.linspace(1, 5, 101)), "speaker_shares": {"s1": 1.0}, "vocabulary": {"hi": 3}}
    cur = {"class_shares": {"a": 0.8, "b": 0.2}, "duration_quantiles": list(
        np.linspace(3, 7, 101)), "speaker_shares": {"s2": 1.0}, "vocabulary": {"hi": 1, "yo": 3}}
    rows = {d["metric"]: d["value"] for d in validate.drift(cur, ref, ValidateConfig().drift)}
    assert rows == {"class_share": pytest.approx(0.3), "duration": pytest.approx(0.5, abs=0.01),
                    "speaker": 1.0, "oov": 0.75}


@pytest.mark.slow  # the step's command in processes of its own; the step runs in process in the fast tier
def test_cli_validate(small_corpus, tmp_path):
    ingest.run(small_corpus, tmp_path / "ingest")
    result = emoalign("validate", "--manifest", tmp_path / "ingest", "--out", tmp_path / "v")
    assert result.returncode == 0, result.stderr
    assert "validation passed: 60 rows = 60 kept + 0 quarantined" in result.stdout
    assert_one_line_error(
        emoalign("validate", "--manifest", tmp_path / "ingest", "--out", tmp_path / "v2",
                 "--set", "validate.min_class_share=0.24"),
        "validation failed: class", "report.html")
    assert_one_line_error(emoalign("validate", "--manifest", tmp_path / "none", "--out",
                                   tmp_path / "v3"), "manifest not found")
    assert_one_line_error(emoalign("validate", "--manifest", tmp_path / "ingest", "--out",
                                   tmp_path / "v4", "--reference", tmp_path / "nope.json"),
                          "reference statistics not found")


def test_user_error_type():
    assert issubclass(validate.ValidationError, UserError)
