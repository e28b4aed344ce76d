"""`sample-corpus --voice tts`: the same plan and files as the built-in generator, spoken by
espeak-ng, with word timings that match the audio and emotion audible in the voice."""

import dataclasses
import hashlib
import itertools
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from components import iemocap, ingest
from corpora import sample_corpus, tts_corpus
from conftest import assert_one_line_error, emoalign, truth_of

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed: apt-get install espeak-ng")

N, SEED = 40, 11


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tts_release(tmp_path_factory) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed: apt-get install espeak-ng")
    root = tmp_path_factory.mktemp("tts") / "IEMOCAP_full_release"
    sample_corpus.generate(root, N, seed=SEED, renderer=tts_corpus.TtsRenderer())
    return root


def utterance(root: Path, utt_id: str) -> tuple[np.ndarray, list[tuple[int, int, str]]]:
    """Samples (float, full scale 1) and the .wdseg words (first frame, last frame, word)."""
    uid = iemocap.parse_utt_id(utt_id)
    session = root / f"Session{uid.session}"
    x, rate = soundfile.read(iemocap.wav_dir(session) / uid.dialog / f"{utt_id}.wav")
    assert rate == 16_000
    wdseg = (iemocap.wdseg_dir(session) / uid.dialog / f"{utt_id}.wdseg").read_text()
    return x, iemocap.parse_wdseg(wdseg)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x ** 2)))


def median_f0(x: np.ndarray, rate: int = 16_000) -> float:
    """Median pitch (Hz) of the clearly periodic 40 ms frames, by autocorrelation."""
    frame, lo, hi = 640, rate // 450, rate // 70
    found = []
    for i in range(0, len(x) - frame, 160):
        seg = x[i:i + frame] - x[i:i + frame].mean()
        ac = np.correlate(seg, seg, "full")[frame - 1:]
        if ac[0] > 0:
            k = lo + int(np.argmax(ac[lo:hi]))
            if ac[k] > 0.5 * ac[0]:
                found.append(rate / k)
    return float(np.median(found))


@needs_espeak
def test_same_plan_labels_and_transcripts_as_the_builtin_voice(tts_release, tmp_path):
    builtin = tmp_path / "builtin"
    sample_corpus.generate(builtin, N, seed=SEED)
    tts, plain = truth_of(tts_release), truth_of(builtin)
    assert tts["counts"] == plain["counts"]
    assert tts["non_utterance_lines"] == plain["non_utterance_lines"]
    for utt_id, u in plain["utterances"].items():
        assert {k: v for k, v in tts["utterances"][utt_id].items() if k != "prosody"} == u
    # Label and transcription files differ only in the times (the audio's lengths differ).
    times = r"\[\s*[\d.]+\s*-\s*[\d.]+\s*\]"
    for path in sorted(builtin.glob("Session*/dialog/*/*.txt")):
        ours = (tts_release / path.relative_to(builtin)).read_text()
        assert re.sub(times, "[T]", ours) == re.sub(times, "[T]", path.read_text())
        assert ours != path.read_text()


@needs_espeak
def test_ingest_finds_what_the_truth_file_says(tts_release, tmp_path):
    truth = truth_of(tts_release)
    result = ingest.run(tts_release, tmp_path / "ingest")
    report = result.report
    assert report["problem_count"] == 0, report["findings"]
    assert report["n_label_blocks"] == N
    assert report["counts"]["label_raw"] == truth["counts"]["code"]
    assert report["counts"]["session"] == truth["counts"]["session"]
    assert report["total_audio_seconds"] == pytest.approx(truth["total_audio_seconds"], abs=0.01)
    for wav in tts_release.glob("Session*/sentences/wav/*/*.wav"):
        info = soundfile.info(str(wav))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")


@needs_espeak
def test_truth_file_records_engine_voices_and_prosody(tts_release):
    truth = truth_of(tts_release)
    version = tts_corpus.espeak_version()[1]
    assert "tts" in truth["generator"] and f"espeak-ng {version}" in truth["generator"]
    voice = truth["voice"]
    assert voice["engine"] == "espeak-ng" and voice["engine_version"] == version
    voices = {s: v["voice"] for s, v in voice["speakers"].items()}
    assert sorted(voices) == sorted(f"Ses0{s}{g}" for s in range(1, 6) for g in "FM")
    assert len(set(voices.values())) == 10
    assert all("+f" in v for s, v in voices.items() if s.endswith("F"))
    assert all("+m" in v for s, v in voices.items() if s.endswith("M"))
    for utt_id, u in truth["utterances"].items():
        p = u["prosody"]
        assert p["voice"] == voices[iemocap.parse_utt_id(utt_id).speaker]
        assert {"rate", "pitch", "range", "amplitude", "snr_db", "rt60_s"} <= set(p)


@needs_espeak
def test_same_seed_same_bytes_whatever_the_worker_count(tts_release, tmp_path):
    again = tmp_path / "again"
    result = emoalign("sample-corpus", again, "--voice", "tts", "--utterances", N,
                      "--seed", SEED, "--workers", 2)
    assert result.returncode == 0, result.stderr
    assert "wrote 40 utterances" in result.stdout and "espeak-ng" in result.stdout
    assert tree_digest(again) == tree_digest(tts_release)


@needs_espeak
def test_wdseg_words_sit_where_the_speech_is(tts_release):
    truth = truth_of(tts_release)
    ratios = []
    for utt_id in truth["utterances"]:
        x, words = utterance(tts_release, utt_id)
        uid = iemocap.parse_utt_id(utt_id)
        text = next(iemocap.parse_transcript_line(line).text for line in (
            iemocap.transcript_dir(tts_release / f"Session{uid.session}") / f"{uid.dialog}.txt"
        ).read_text().splitlines() if line.startswith(utt_id + " "))
        assert [w for _, _, w in words] == sample_corpus.spoken_words(text)
        inside = np.zeros(len(x), bool)
        for first, last, _ in words:
            inside[first * 160:(last + 1) * 160] = True
        # Pauses between words, 10 ms clear of either word.
        pause = np.zeros(len(x), bool)
        for (_, last, _), (first, _, _) in zip(words, words[1:]):
            pause[(last + 2) * 160:(first - 1) * 160] = True
        assert all(rms(x[a * 160:(b + 1) * 160]) > 0 for a, b, _ in words)
        if pause.sum() >= 320:
            ratios.append(rms(x[inside]) / rms(x[pause]))
    assert len(ratios) > N // 2
    assert min(ratios) > 2.5  # the noisiest rooms: 12 dB SNR
    assert np.median(ratios) > 5


@needs_espeak
def test_word_spans_hold_all_of_the_dry_speech():
    """Without room noise and reverb, nothing sounds outside the words' spans."""
    plans, speakers, _ = sample_corpus.plan_corpus(100, seed=3)
    renderer = tts_corpus.TtsRenderer(room=False)
    for plan in [p for p in plans if len(p.words) >= 3][:5]:
        samples, spans, info = renderer(plan, speakers[f"Ses0{plan.session}{plan.gender}"], 3)
        x = samples.astype(np.float64)
        inside = np.zeros(len(x), bool)
        for start, end, _ in spans:
            inside[int(start * 16000):int(np.ceil(end * 16000))] = True
            assert rms(x[int(start * 16000):int(start * 16000) + 320]) > 1  # tight: sound
            assert rms(x[int(end * 16000) - 320:int(end * 16000)]) > 1  # at both ends
        assert np.sum(x[~inside] ** 2) < 1e-4 * np.sum(x ** 2)
        assert np.abs(x[~inside]).max() < 50


@needs_espeak
def test_words_are_spoken_one_by_one_when_the_breaks_cannot_be_found(monkeypatch):
    delivery = {"voice": "en-us+m1", "rate": 175, "pitch": 50, "amplitude": 100, "range": 100}
    words = ["okay", "then", "tomorrow", "morning"]
    binary = tts_corpus.espeak_version()[0]
    chunks, cut = tts_corpus.speak_words(binary, delivery, words)
    assert cut == "utterance" and len(chunks) == 4
    monkeypatch.setattr(tts_corpus, "BREAK_MS", 50)  # too short to tell words apart
    fallback, cut = tts_corpus.speak_words(binary, delivery, words)
    assert cut == "word" and len(fallback) == 4
    # Either way a chunk is the word, no silence around it: alone, a word ends a sentence
    # rather than a clause, which lengthens it a little.
    for a, b in zip(chunks, fallback):
        assert abs(len(a) - len(b)) < 0.15 * 22_050
        assert min(rms(b[:220].astype(float)), rms(b[-220:].astype(float))) > 1


@needs_espeak
def test_emotion_is_heard_in_the_voice():
    """The same utterances spoken angry, neutral and sad: louder, higher, faster in that order."""
    plans, speakers, _ = sample_corpus.plan_corpus(200, seed=0)
    picked = [p for p in plans if p.cue in ("neutral", "text") and 3 <= len(p.words) <= 8][:8]
    renderer = tts_corpus.TtsRenderer()
    heard = {}
    for code in ("ang", "neu", "sad"):
        loudness, pitch, seconds = [], [], []
        for plan in picked:
            spoken = dataclasses.replace(plan, voice_code=code)
            samples, spans, _ = renderer(spoken, speakers[f"Ses0{plan.session}{plan.gender}"], 0)
            x = samples / 32768
            speech = np.concatenate([x[int(s * 16000):int(e * 16000)] for s, e, _ in spans])
            loudness.append(rms(speech))
            pitch.append(median_f0(speech))
            seconds.append(len(speech) / 16000)
        heard[code] = (np.mean(loudness), np.mean(pitch), np.mean(seconds))
    (ang_rms, ang_f0, ang_s), (neu_rms, neu_f0, neu_s), (sad_rms, sad_f0, sad_s) = (
        heard["ang"], heard["neu"], heard["sad"])
    assert ang_rms > 1.25 * neu_rms > 1.25 * sad_rms
    assert ang_f0 > 1.05 * neu_f0 > 1.05 * sad_f0
    assert sad_s > 1.1 * neu_s > 1.05 * ang_s


def test_no_single_cue_gives_the_emotion_away():
    """Per-utterance jitter: each cue's range for one emotion overlaps its neighbours'."""
    _, speakers, _ = sample_corpus.plan_corpus(60, seed=0)
    voices = [tts_corpus.speaker_voice(s) for s in speakers.values()]
    rng = np.random.default_rng(0)
    codes = ("neu", "hap", "exc", "sad", "ang")
    drawn = {code: [tts_corpus.draw_delivery(rng, voices[i % 10], code) for i in range(400)]
             for code in codes}
    for cue in ("rate", "pitch", "range", "amplitude"):
        values = {code: np.array([d[cue] for d in ds]) for code, ds in drawn.items()}
        for a, b in itertools.combinations(codes, 2):
            lo, hi = sorted((a, b), key=lambda c: np.median(values[c]))
            # The upper tenth of the lower emotion reaches past the lower tenth of the higher.
            assert np.percentile(values[lo], 90) > np.percentile(values[hi], 10), (cue, a, b)
    assert np.mean([d["amplitude"] for d in drawn["ang"]]) > np.mean(
        [d["amplitude"] for d in drawn["sad"]])


def test_missing_espeak_is_one_line_with_the_install_command(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    out = tmp_path / "corpus"
    result = emoalign("sample-corpus", out, "--voice", "tts", "--utterances", 20,
                      env={"PATH": str(empty)})
    assert_one_line_error(result, "espeak-ng", "apt-get install espeak-ng")
    assert not out.exists()


def test_builtin_voice_is_the_default(tmp_path):
    default, builtin = tmp_path / "default", tmp_path / "builtin"
    assert emoalign("sample-corpus", default, "--utterances", 15).returncode == 0
    assert emoalign("sample-corpus", builtin, "--utterances", 15,
                    "--voice", "builtin").returncode == 0
    direct = tmp_path / "direct"
    sample_corpus.generate(direct, 15, seed=0)
    assert tree_digest(default) == tree_digest(builtin) == tree_digest(direct)


# ---- --stress: the label is which emotion word is stressed -------------------------------

N_STRESS, STRESS_SEED = 24, 5


@pytest.fixture(scope="module")
def stressed_release(tmp_path_factory) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed: apt-get install espeak-ng")
    root = tmp_path_factory.mktemp("stress") / "IEMOCAP_full_release"
    sample_corpus.generate(root, N_STRESS, seed=STRESS_SEED, renderer=tts_corpus.TtsRenderer(),
                           stress=True)
    return root


def emotion_spans(root: Path, utt_id: str, stress: dict) -> tuple[np.ndarray, np.ndarray]:
    """The samples inside the stressed word's .wdseg span and inside the other emotion
    word's, checking the .wdseg names the words the truth file does."""
    x, words = utterance(root, utt_id)
    other = next(w for w in stress["emotion_words"] if w["index"] != stress["index"])
    spans = []
    for index, word in ((stress["index"], stress["word"]), (other["index"], other["word"])):
        first, last, said = words[index]
        assert said == word
        spans.append(x[first * 160:(last + 1) * 160])
    return spans[0], spans[1]


@needs_espeak
def test_stressed_corpus_has_the_layout_and_counts_ingest_reads(stressed_release, tmp_path):
    truth = truth_of(stressed_release)
    assert truth["stress"] is True and "--stress" in truth["generator"]
    report = ingest.run(stressed_release, tmp_path / "ingest").report
    assert report["problem_count"] == 0, report["findings"]
    assert report["n_label_blocks"] == len(truth["utterances"]) == N_STRESS
    assert report["counts"]["label_raw"] == truth["counts"]["code"] == {
        "ang": 6, "hap": 6, "neu": 6, "sad": 6}
    assert truth["counts"]["cue"] == {"stress": N_STRESS}
    for utt_id in truth["utterances"]:
        uid = iemocap.parse_utt_id(utt_id)
        session = stressed_release / f"Session{uid.session}"
        assert (iemocap.wdseg_dir(session) / uid.dialog / f"{utt_id}.wdseg").is_file()


@needs_espeak
def test_stressed_truth_names_two_classes_and_labels_the_stressed_word(stressed_release):
    truth = truth_of(stressed_release)
    texts = {}
    for path in stressed_release.glob("Session*/dialog/transcriptions/*.txt"):
        for line in path.read_text().splitlines():
            if "XX" not in line.split()[0] and not line.startswith(("F:", "M:")):
                parsed = iemocap.parse_transcript_line(line)
                texts[parsed.utt_id] = parsed.text
    for utt_id, u in truth["utterances"].items():
        s, words = u["stress"], sample_corpus.spoken_words(texts[utt_id])
        assert words[s["index"]] == s["word"]
        (a, b) = s["emotion_words"]
        assert a["index"] < b["index"] and a["class"] != b["class"]
        assert {a["word"], b["word"]} == {words[a["index"]], words[b["index"]]}
        assert s["index"] in (a["index"], b["index"]) and s["first"] == (s["index"] == a["index"])
        assert u["code"] == s["class"] == (a if s["first"] else b)["class"]
        assert s["loudness"] > 1 and s["pitch"] > 0 and s["rate"] < 1
        p = u["prosody"]  # the delivery is neutral but for the stressed word
        assert p["stressed"]["amplitude"] > p["amplitude"] and p["stressed"]["pitch"] > p[
            "pitch"] and p["stressed"]["rate"] < p["rate"]


@needs_espeak
def test_stressed_word_is_louder_and_higher_than_the_other_emotion_word(stressed_release):
    truth = truth_of(stressed_release)
    louder, higher = [], []
    for utt_id, u in truth["utterances"].items():
        stressed, other = emotion_spans(stressed_release, utt_id, u["stress"])
        louder.append(rms(stressed) / rms(other))
        higher.append(median_f0(stressed) / median_f0(other))
    assert np.mean(louder) > 1.5 and np.mean(np.array(louder) > 1.1) > 0.9
    assert np.median(higher) > 1.08


@needs_espeak
def test_stressed_corpus_same_bytes_with_two_workers(stressed_release, tmp_path):
    again = tmp_path / "again"
    result = emoalign("sample-corpus", again, "--voice", "tts", "--stress", "--utterances",
                      N_STRESS, "--seed", STRESS_SEED, "--workers", 2)
    assert result.returncode == 0, result.stderr
    assert f"wrote {N_STRESS} utterances" in result.stdout and "stressed" in result.stdout
    assert tree_digest(again) == tree_digest(stressed_release)


def test_stress_with_the_builtin_voice_is_one_line(tmp_path):
    out = tmp_path / "corpus"
    result = emoalign("sample-corpus", out, "--stress", "--utterances", 20)
    assert_one_line_error(result, "--stress", "--voice tts")
    assert not out.exists()
