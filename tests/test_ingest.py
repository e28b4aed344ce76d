"""Ingest on generated corpora: counts equal the ground truth; every fault is reported."""

import json
import shutil
import wave

import pandas as pd
import pytest

from components import iemocap, ingest, outputs
from components.config import IngestConfig
from components.errors import CorpusError
from conftest import truth_of

CLASS4 = {"neu": "neutral", "hap": "happy", "exc": "happy", "ang": "angry", "sad": "sad"}


@pytest.fixture(scope="module")
def clean(small_corpus, tmp_path_factory):
    return ingest.run(small_corpus, tmp_path_factory.mktemp("ingest"))


def ids_in(findings: list[dict]) -> set[str]:
    return {f["utt_id"] for f in findings}


def test_counts_equal_the_generators_ground_truth(clean, small_corpus):
    truth = truth_of(small_corpus)
    report = clean.report
    assert report["n_label_blocks"] == truth["n_utterances"] == len(clean.manifest)
    assert report["counts"]["label_raw"] == truth["counts"]["code"]
    assert report["counts"]["session"] == truth["counts"]["session"]
    assert report["counts"]["label"] == truth["counts"]["class4"]
    assert report["findings"]["non_utterance_lines"] == truth["non_utterance_lines"]
    assert report["total_audio_seconds"] == pytest.approx(truth["total_audio_seconds"], abs=0.01)
    assert report["problem_count"] == 0
    assert report["full_release_check"] == {"applies": False}


def test_manifest_follows_the_contract(clean):
    m = outputs.read_manifest(clean.manifest_path)
    assert list(m.columns) == outputs.MANIFEST_SCHEMA.names
    assert m["utt_id"].is_unique
    row = m.set_index("utt_id").loc["Ses01F_impro01_M000"]
    assert (row.session, row.dialog, row.speaker, row.gender, bool(row.scripted)) == (
        1, "Ses01F_impro01", "Ses01M", "M", False)
    assert row.sample_rate == 16000 and row.duration_s == pytest.approx(row.end - row.start,
                                                                         abs=1e-3)
    assert m["wav_path"].map(lambda p: p.endswith(".wav")).all()
    assert m["wdseg_path"].notna().all()
    assert set(m["speaker"]) == {f"Ses0{s}{g}" for s in range(1, 6) for g in "FM"}
    # Rows outside the class set are kept with a null label: nothing dropped here.
    outside = m[m["label"].isna()]
    assert set(outside["label_raw"]) == set(m["label_raw"]) - set(CLASS4)
    labelled = m[m["label"].notna()]
    assert (labelled["label_raw"].map(CLASS4) == labelled["label"]).all()
    assert m["valence"].between(1, 5).all() and m["transcript"].str.len().gt(0).all()
    assert m.sort_values(["session", "dialog", "start"]).index.tolist() == m.index.tolist()


def test_report_file_matches_the_returned_report(clean):
    assert json.loads(clean.report_path.read_text()) == json.loads(json.dumps(clean.report))


def test_the_parent_of_the_release_is_accepted(small_corpus, clean):
    manifest, _ = ingest.scan(small_corpus.parent, IngestConfig())
    pd.testing.assert_frame_equal(manifest, clean.manifest)


def test_excited_can_be_dropped_or_kept_apart(small_corpus, clean):
    n_exc = truth_of(small_corpus)["counts"]["code"]["exc"]
    dropped, report = ingest.scan(small_corpus, IngestConfig(merge_excited=False))
    assert dropped[dropped["label_raw"] == "exc"]["label"].isna().all()
    assert report["counts"]["label"]["happy"] == clean.report["counts"]["label"]["happy"] - n_exc
    apart, report = ingest.scan(small_corpus, IngestConfig(
        classes=["neutral", "happy", "excited", "angry", "sad"], merge_excited=False))
    assert report["counts"]["label"]["excited"] == n_exc


# ---- faults -----------------------------------------------------------------------------

def first_utt(root, session=1, code=None):
    """The first utterance of a session (with that code, if given; else of any session)."""
    truth = truth_of(root)["utterances"]
    matches = [u for u, info in truth.items() if code is None or info["code"] == code]
    return next((u for u in matches if u.startswith(f"Ses0{session}")), matches[0])


def wav_of(root, utt_id):
    uid = iemocap.parse_utt_id(utt_id)
    return iemocap.wav_dir(root / f"Session{uid.session}") / uid.dialog / f"{utt_id}.wav"


def label_file_of(root, utt_id):
    uid = iemocap.parse_utt_id(utt_id)
    return iemocap.label_dir(root / f"Session{uid.session}") / f"{uid.dialog}.txt"


def transcript_file_of(root, utt_id):
    uid = iemocap.parse_utt_id(utt_id)
    return iemocap.transcript_dir(root / f"Session{uid.session}") / f"{uid.dialog}.txt"


def scan(root):
    manifest, report = ingest.scan(root, IngestConfig())
    return manifest.set_index("utt_id"), report["findings"], report


def test_missing_wav(corpus_copy):
    utt = first_utt(corpus_copy)
    wav_of(corpus_copy, utt).unlink()
    m, f, _ = scan(corpus_copy)
    assert ids_in(f["labels_without_wav"]) == {utt}
    assert pd.isna(m.loc[utt, "wav_path"]) and pd.isna(m.loc[utt, "duration_s"])


def test_empty_and_headerless_wavs_are_unreadable(corpus_copy):
    empty, headerless = first_utt(corpus_copy, 1), first_utt(corpus_copy, 2)
    wav_of(corpus_copy, empty).write_bytes(b"")
    data = wav_of(corpus_copy, headerless).read_bytes()
    wav_of(corpus_copy, headerless).write_bytes(data[:30])
    m, f, _ = scan(corpus_copy)
    assert ids_in(f["unreadable_wavs"]) == {empty, headerless}
    assert len(m) == truth_of(corpus_copy)["n_utterances"]


def test_zero_frame_wav_is_reported(corpus_copy):
    utt = first_utt(corpus_copy, 3)
    with wave.open(str(wav_of(corpus_copy, utt)), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
    _, f, _ = scan(corpus_copy)
    assert [x["reason"] for x in f["unreadable_wavs"] if x["utt_id"] == utt] == [
        "no audio frames"]


def test_missing_transcript_line(corpus_copy):
    utt = first_utt(corpus_copy, 5)
    path = transcript_file_of(corpus_copy, utt)
    path.write_text("".join(x for x in path.read_text().splitlines(keepends=True)
                            if not x.startswith(utt + " ")))
    m, f, _ = scan(corpus_copy)
    assert ids_in(f["labels_without_transcript"]) == {utt}
    assert pd.isna(m.loc[utt, "transcript"])


def test_transcript_and_wav_without_a_label_block(corpus_copy):
    utt = first_utt(corpus_copy, 2)
    path = label_file_of(corpus_copy, utt)
    lines = path.read_text().split("\n\n")
    path.write_text("\n\n".join(b for b in lines if f"\t{utt}\t" not in b))
    m, f, _ = scan(corpus_copy)
    assert utt not in m.index
    assert ids_in(f["transcripts_without_label"]) == {utt}
    assert ids_in(f["wavs_without_label"]) == {utt}


def test_junk_line_in_a_label_file(corpus_copy):
    utt = first_utt(corpus_copy, 1)
    path = label_file_of(corpus_copy, utt)
    path.write_text(path.read_text() + "[12.5 - oops]\tSes01F_impro01_F999\tneu\n"
                    "this line is junk\n")
    m, f, report = scan(corpus_copy)
    assert [x["line"] for x in f["unparseable_lines"]] == [
        len(path.read_text().splitlines()) - 1, len(path.read_text().splitlines())]
    assert len(m) == truth_of(corpus_copy)["n_utterances"]
    assert report["problem_count"] == 2


def test_duplicated_id_is_kept_twice_and_reported(corpus_copy):
    utt = first_utt(corpus_copy, 3)
    path = label_file_of(corpus_copy, utt)
    block = next(b for b in path.read_text().split("\n\n") if f"\t{utt}\t" in b)
    other = next(p for p in path.parent.glob("*.txt") if p != path)
    other.write_text(other.read_text() + block.strip() + "\n\n")
    m, f, _ = scan(corpus_copy)
    assert ids_in(f["duplicate_ids"]) == {utt}
    assert (m.index == utt).sum() == 2  # validation decides what to do with it


def test_non_utf8_bytes_are_read_as_latin1(corpus_copy):
    utt = first_utt(corpus_copy, 4)
    path = transcript_file_of(corpus_copy, utt)
    lines = path.read_text().splitlines(keepends=True)
    lines = [x.replace(": ", ": Caf\xe9 ", 1) if x.startswith(utt + " ") else x for x in lines]
    path.write_bytes("".join(lines).encode("latin-1"))
    m, f, _ = scan(corpus_copy)
    assert f["latin1_files"] == [str(path.relative_to(corpus_copy))]
    assert m.loc[utt, "transcript"].startswith("Café ")


def test_unknown_code_is_kept_with_a_null_label(corpus_copy):
    utt = first_utt(corpus_copy, 1, code="neu")
    path = label_file_of(corpus_copy, utt)
    path.write_text(path.read_text().replace(f"\t{utt}\tneu\t", f"\t{utt}\tjoy\t"))
    m, f, _ = scan(corpus_copy)
    assert [(x["utt_id"], x["code"]) for x in f["unknown_label_codes"]] == [(utt, "joy")]
    assert m.loc[utt, "label_raw"] == "joy" and pd.isna(m.loc[utt, "label"])


def test_resource_forks_and_evaluator_folders_are_ignored(corpus_copy):
    utt = first_utt(corpus_copy, 1)
    label = label_file_of(corpus_copy, utt)
    shutil.copy(label, label.parent / f"._{label.name}")
    (label.parent / "Categorical").mkdir()
    (label.parent / "Categorical" / "Ses01F_impro01_e1_cat.txt").write_text("junk\n")
    wav = wav_of(corpus_copy, utt)
    (wav.parent / f"._{wav.name}").write_bytes(b"\x00\x05\x16\x07")
    m, f, report = scan(corpus_copy)
    assert report["problem_count"] == 0
    assert len(m) == truth_of(corpus_copy)["n_utterances"]
    assert len(f["ignored_files"]) == 2


def test_utterance_in_the_wrong_session_folder(corpus_copy):
    utt = first_utt(corpus_copy, 2)
    path = label_file_of(corpus_copy, utt)
    block = next(b for b in path.read_text().split("\n\n") if f"\t{utt}\t" in b)
    moved = block.replace(utt, utt.replace("Ses02", "Ses01"))
    target = next((corpus_copy / "Session3" / "dialog" / "EmoEvaluation").glob("*.txt"))
    target.write_text(target.read_text() + moved.strip() + "\n\n")
    m, f, _ = scan(corpus_copy)
    moved_id = utt.replace("Ses02", "Ses01")
    assert ids_in(f["misplaced_utterances"]) == {moved_id}
    moved_rows = m.loc[[moved_id]]  # the id may also exist where it belongs
    assert (moved_rows["session"] == 3).sum() == 1
    assert (moved_rows["speaker"].str.startswith("Ses01")).all()


def test_not_a_release(tmp_path):
    with pytest.raises(CorpusError, match="not an IEMOCAP release"):
        ingest.scan(tmp_path, IngestConfig())
    with pytest.raises(CorpusError, match="does not exist"):
        ingest.scan(tmp_path / "missing", IngestConfig())


def test_full_release_check_speaks_up_for_a_real_looking_corpus(corpus_copy):
    # Without the generator's marker and with all five sessions, ingest treats the corpus as
    # the real release and checks the 4-class total of 5,531.
    (corpus_copy / "SAMPLE_CORPUS.json").unlink()
    _, report = ingest.scan(corpus_copy, IngestConfig())
    check = report["full_release_check"]
    assert check["applies"] and not check["ok"] and check["expected_total"] == 5531
    assert any(line.startswith("WARNING") and "5531" in line
               for line in ingest.summary_lines(report))
    # A non-standard class set is not compared with the standard counts.
    _, report = ingest.scan(corpus_copy, IngestConfig(merge_excited=False))
    assert report["full_release_check"] == {"applies": False}
