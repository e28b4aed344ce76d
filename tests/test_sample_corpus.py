"""The generated corpus: exact layout, determinism, proportions, and cues in voice and words."""

import hashlib
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile

from components import iemocap
from corpora import sample_corpus
from conftest import truth_of


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_whatever_the_worker_count(tmp_path, small_corpus):
    again = tmp_path / "again"
    sample_corpus.generate(again, 60, seed=7, workers=2)
    assert tree_digest(again) == tree_digest(small_corpus)


def test_another_seed_gives_another_corpus(tmp_path, small_corpus):
    other = tmp_path / "other"
    sample_corpus.generate(other, 60, seed=8)
    a, b = tree_digest(other), tree_digest(small_corpus)
    assert a != b


def test_layout_matches_the_release(small_corpus):
    truth = truth_of(small_corpus)
    ids = list(truth["utterances"])
    assert len(ids) == 60
    for utt_id in ids:
        uid = iemocap.parse_utt_id(utt_id)
        session_dir = small_corpus / f"Session{uid.session}"
        assert (iemocap.wav_dir(session_dir) / uid.dialog / f"{utt_id}.wav").is_file()
        assert (iemocap.wdseg_dir(session_dir) / uid.dialog / f"{utt_id}.wdseg").is_file()
        assert (iemocap.label_dir(session_dir) / f"{uid.dialog}.txt").is_file()
        assert (iemocap.transcript_dir(session_dir) / f"{uid.dialog}.txt").is_file()
    dialogs = {iemocap.parse_utt_id(u).dialog for u in ids}
    assert any("_impro" in d for d in dialogs) and any("_script" in d for d in dialogs)
    assert {iemocap.parse_utt_id(u).speaker for u in ids} == {
        f"Ses0{s}{g}" for s in range(1, 6) for g in "FM"}


def test_label_files_open_with_the_header_and_hold_annotator_lines(small_corpus):
    path = next((small_corpus / "Session1" / "dialog" / "EmoEvaluation").glob("*.txt"))
    lines = path.read_text().splitlines()
    assert lines[0] == "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]"
    headers = [iemocap.parse_label_header(x) for x in lines if x.startswith("[")]
    assert headers and all(h.start < h.end for h in headers)
    assert any(re.match(r"^C-E\d:\t\w+;\t\(", x) for x in lines)
    assert any(re.match(r"^A-E\d:\tval \d; act \d; dom  \d;\t\(", x) for x in lines)


def test_wavs_are_16k_mono_16bit_and_agree_with_their_label_blocks(small_corpus):
    blocks = {}
    for path in small_corpus.glob("Session*/dialog/EmoEvaluation/*.txt"):
        for line in path.read_text().splitlines():
            if line.startswith("["):
                b = iemocap.parse_label_header(line)
                blocks[b.utt_id] = b
    for wav in small_corpus.glob("Session*/sentences/wav/*/*.wav"):
        info = soundfile.info(str(wav))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        b = blocks[wav.stem]
        assert abs(info.frames / 16000 - (b.end - b.start)) < 1e-3


def test_wdseg_words_follow_the_transcript(small_corpus):
    truth = truth_of(small_corpus)
    utt_id = next(iter(truth["utterances"]))
    uid = iemocap.parse_utt_id(utt_id)
    session = small_corpus / f"Session{uid.session}"
    text = iemocap.parse_transcript_line(next(
        line for line in (iemocap.transcript_dir(session) / f"{uid.dialog}.txt")
        .read_text().splitlines() if line.startswith(utt_id + " "))).text
    wdseg = (iemocap.wdseg_dir(session) / uid.dialog / f"{utt_id}.wdseg").read_text()
    rows = [line.split() for line in wdseg.splitlines()[1:] if line.split()[0].isdigit()]
    words = [r[3] for r in rows if r[3] not in ("<s>", "</s>")]
    assert words == [w.upper() for w in sample_corpus.spoken_words(text)]
    starts = [int(r[0]) for r in rows]
    assert starts == sorted(starts)


def test_code_allocation_is_iemocap_exact_at_full_size():
    assert sample_corpus.allocate_codes(10_039) == iemocap.FULL_RELEASE_CODE_COUNTS
    four = sample_corpus.allocate_codes(10_039)
    assert four["neu"] + four["hap"] + four["exc"] + four["ang"] + four["sad"] == 5531


@pytest.mark.parametrize("n", [11, 50, 600, 2000])
def test_every_code_appears_and_proportions_hold(n):
    counts = sample_corpus.allocate_codes(n)
    assert sum(counts.values()) == n
    assert all(counts[c] >= 1 for c in iemocap.LABEL_CODES)
    for code in ("neu", "fru", "xxx", "ang", "sad"):
        share = iemocap.FULL_RELEASE_CODE_COUNTS[code] / iemocap.FULL_RELEASE_UTTERANCES
        assert abs(counts[code] / n - share) < max(0.03, 2 / n)


def test_full_size_plan_spreads_over_sessions_and_dialogs():
    plans, speakers, _ = sample_corpus.plan_corpus(10_039, seed=0)
    assert Counter(p.code for p in plans) == Counter(iemocap.FULL_RELEASE_CODE_COUNTS)
    per_session = Counter(p.session for p in plans)
    assert sorted(per_session.values()) == [2007, 2008, 2008, 2008, 2008]
    dialogs = {p.dialog for p in plans}
    assert 140 <= len(dialogs) <= 170  # the release has 151
    assert len({p.utt_id for p in plans}) == len(plans)
    assert {"Ses03F_impro05a", "Ses01M_script01_1"} <= dialogs


def test_modalities_carry_the_emotion_as_planned():
    plans, _, _ = sample_corpus.plan_corpus(600, seed=0)
    cue_words = {w for words in sample_corpus.EMOTION_WORDS.values() for w in words}
    assert not cue_words & set(sample_corpus.NEUTRAL_WORDS)
    improvised = [p for p in plans if "_impro" in p.dialog]
    voice_only = [p for p in improvised if p.cue == "voice"]
    text_only = [p for p in improvised if p.cue == "text"]
    assert voice_only and text_only
    assert all(p.text_code == "neu" and p.voice_code == p.code for p in voice_only)
    assert all(p.voice_code == "neu" and p.text_code == p.code for p in text_only)
    assert not any(cue_words & set(p.words) for p in voice_only)
    assert all(cue_words & set(p.words) for p in text_only)
    shares = Counter(p.cue for p in plans if p.code not in ("neu", "xxx", "oth"))
    total = sum(shares.values())
    assert abs(shares["both"] / total - 0.4) < 0.08


def test_voice_settings_change_the_audio():
    plans, speakers, _ = sample_corpus.plan_corpus(600, seed=0)
    plan = next(p for p in plans if p.code == "neu")
    speaker = speakers[f"Ses0{plan.session}{plan.gender}"]

    def rendered(voice_code):
        p = sample_corpus.UtterancePlan(**{**plan.__dict__, "voice_code": voice_code})
        samples, _ = sample_corpus.render(p, speaker, seed=0)
        x = samples.astype(np.float64) / 32768
        return len(x) / 16000, float(np.sqrt(np.mean(x ** 2)))

    neutral_len, neutral_rms = rendered("neu")
    angry_len, angry_rms = rendered("ang")
    sad_len, sad_rms = rendered("sad")
    assert angry_rms > 1.3 * neutral_rms > 1.3 * sad_rms  # louder, softer
    assert sad_len > 1.15 * neutral_len  # slower


# ---- --stress: the plan (the audio is tests/test_tts_corpus.py's) -------------------------

def test_stress_vocabulary_is_large_distinct_and_apart_from_the_carrier_words():
    from corpora import stress_plan

    vocabulary = stress_plan.VOCABULARY
    assert sorted(vocabulary) == sorted(stress_plan.CODES) == ["ang", "hap", "neu", "sad"]
    for code, words in vocabulary.items():
        assert len(set(words)) >= 30, code
        assert all(re.fullmatch(r"[a-z]+", w) for w in words), code
    every = [w for words in vocabulary.values() for w in words]
    assert len(every) == len(set(every))  # no word in two classes
    carriers = {w.lower() for t in stress_plan.TEMPLATES
                for w in re.sub(r"\{\w+\}", " ", t).split()}
    carriers |= {w for fill in stress_plan.FILLERS.values() for f in fill for w in f.split()}
    assert not carriers & set(every)


def test_stress_plan_names_two_classes_and_labels_the_stressed_one():
    from corpora import stress_plan

    plans, _, _ = sample_corpus.plan_corpus(400, seed=5, stress=True)
    assert Counter(p.code for p in plans) == {c: 100 for c in stress_plan.CODES}
    pairs, firsts = Counter(), 0
    for p in plans:
        s = p.stress
        assert (p.cue, p.voice_code) == ("stress", "neu")
        assert p.words == sample_corpus.spoken_words(p.text)
        assert p.words[s.index] == s.word and p.words[s.other_index] == s.other_word
        assert s.code == p.code != s.other_code
        assert s.word in stress_plan.VOCABULARY[s.code]
        assert s.other_word in stress_plan.VOCABULARY[s.other_code]
        assert sum(w in stress_plan.VOCABULARY[c] for w in p.words
                   for c in stress_plan.CODES) == 2  # the carrier words are neutral
        assert s.loudness >= 1.3 and s.pitch >= 0.08 and s.rate <= 0.9
        pairs[s.code, s.other_code] += 1
        firsts += s.index < s.other_index
    assert len(pairs) == 12  # every ordered pair of different classes
    assert 150 < firsts < 250  # which comes first says nothing of which is stressed
    again, _, _ = sample_corpus.plan_corpus(400, seed=5, stress=True)
    assert again == plans
