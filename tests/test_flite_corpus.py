"""`sample-corpus --voice flite`: the same plan and files as the built-in generator, spoken by
flite, with word timings that match the audio and emotion audible in the voice. Small on
purpose (a corpus of 11 short utterances, a few more spoken alone): about 10 s on 2 cores."""

import dataclasses
import hashlib
import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from components import iemocap
from components.errors import UserError
from corpora import flite_corpus, sample_corpus
from conftest import assert_one_line_error, emoalign, truth_of

needs_flite = pytest.mark.skipif(shutil.which("flite") is None,
                                 reason="flite is not installed: apt-get install flite")

# The fewest utterances a corpus has (one per code); seed 22's are short (82 words in all).
N, SEED = sample_corpus.MIN_UTTERANCES, 22


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def flite_release(tmp_path_factory) -> Path:
    if shutil.which("flite") is None:
        pytest.skip("flite is not installed: apt-get install flite")
    root = tmp_path_factory.mktemp("flite") / "IEMOCAP_full_release"
    result = emoalign("sample-corpus", root, "--voice", "flite", "--utterances", N,
                      "--seed", SEED)
    assert result.returncode == 0, result.stderr
    (root.parent / "stdout.txt").write_text(result.stdout)
    return root


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


def speaker_of(plan: sample_corpus.UtterancePlan) -> str:
    return f"Ses0{plan.session}{plan.gender}"


@needs_flite
def test_same_seed_same_bytes_whatever_the_worker_count(flite_release, tmp_path):
    said = (flite_release.parent / "stdout.txt").read_text()
    version = flite_corpus.flite_version()[1]
    assert f"wrote {N} utterances" in said and f"flite {version})" in said
    again = tmp_path / "again"  # the CLI's corpus on one worker, this one on two
    sample_corpus.generate(again, N, seed=SEED, workers=2,
                           renderer=flite_corpus.FliteRenderer())
    assert tree_digest(again) == tree_digest(flite_release)


@needs_flite
def test_16_khz_int16_and_the_plan_of_the_builtin_voice(flite_release, tmp_path):
    wavs = sorted(flite_release.glob("Session*/sentences/wav/*/*.wav"))
    assert len(wavs) == N
    for wav in wavs:
        info = soundfile.info(str(wav))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    builtin = tmp_path / "builtin"
    sample_corpus.generate(builtin, N, seed=SEED)
    flite, plain = truth_of(flite_release), truth_of(builtin)
    assert flite["counts"] == plain["counts"]
    for utt_id, u in plain["utterances"].items():
        assert {k: v for k, v in flite["utterances"][utt_id].items() if k != "prosody"} == u


@needs_flite
def test_truth_file_records_engine_voices_and_prosody(flite_release):
    truth = truth_of(flite_release)
    version = flite_corpus.flite_version()[1]
    assert f"--voice flite v{flite_corpus.FLITE_CORPUS_VERSION} (flite {version})" in truth[
        "generator"]
    voice = truth["voice"]
    assert (voice["renderer"], voice["engine"], voice["engine_version"]) == (
        "flite", "flite", version)
    speakers = voice["speakers"]
    assert sorted(speakers) == sorted(f"Ses0{s}{g}" for s in range(1, 6) for g in "FM")
    assert all(v["voice"] == "slt" for s, v in speakers.items() if s.endswith("F"))
    assert {v["voice"] for s, v in speakers.items() if s.endswith("M")} == {
        "kal", "kal16", "awb"}
    # No two speakers alike: the plan's pitch and formant scale set apart those sharing a
    # voice (seed 22's Ses01M and Ses05M have the same pitch, not the same timbre).
    assert len({(v["voice"], v["pitch"], v["timbre"]) for v in speakers.values()}) == 10
    assert voice["emotions"]["ang"]["loudness"] > voice["emotions"]["sad"]["loudness"]
    for utt_id, u in truth["utterances"].items():
        p = u["prosody"]
        assert p["voice"] == speakers[iemocap.parse_utt_id(utt_id).speaker]["voice"]
        assert {"rate", "pitch", "range", "amplitude", "snr_db", "rt60_s"} <= set(p)


@needs_flite
def test_wdseg_words_sit_where_the_speech_is(flite_release):
    truth = truth_of(flite_release)
    ratios = []
    for utt_id in truth["utterances"]:
        uid = iemocap.parse_utt_id(utt_id)
        session = flite_release / f"Session{uid.session}"
        x, _ = soundfile.read(iemocap.wav_dir(session) / uid.dialog / f"{utt_id}.wav")
        words = iemocap.parse_wdseg(
            (iemocap.wdseg_dir(session) / uid.dialog / f"{utt_id}.wdseg").read_text())
        text = next(iemocap.parse_transcript_line(line).text for line in (
            iemocap.transcript_dir(session) / f"{uid.dialog}.txt").read_text().splitlines()
            if line.startswith(utt_id + " "))
        assert [w for _, _, w in words] == sample_corpus.spoken_words(text)
        inside = np.zeros(len(x), bool)
        for first, last, _ in words:
            inside[first * 160:(last + 1) * 160] = True
            assert rms(x[first * 160:(last + 1) * 160]) > 0.003  # about -50 dBFS: speech
        # Pauses between words, 10 ms clear of either word.
        pause = np.zeros(len(x), bool)
        for (_, last, _), (first, _, _) in zip(words, words[1:]):
            pause[(last + 2) * 160:(first - 1) * 160] = True
        if pause.sum() >= 320:
            ratios.append(rms(x[inside]) / rms(x[pause]))
    assert len(ratios) > N // 2
    assert min(ratios) > 2.5  # the noisiest rooms: 12 dB SNR
    assert np.median(ratios) > 5


def short_plans(n: int, seed: int = 0, words: tuple[int, int] = (3, 5)):
    plans, speakers, _ = sample_corpus.plan_corpus(200, seed=seed)
    picked = [p for p in plans if words[0] <= len(p.words) <= words[1]][:n]
    return picked, speakers


@needs_flite
def test_word_spans_hold_all_of_the_dry_speech():
    """Without room noise and reverb, nothing sounds outside the words' spans, and each
    span starts and ends in sound."""
    plans, speakers = short_plans(3, seed=3)
    renderer = flite_corpus.FliteRenderer(room=False)
    for plan in plans:
        samples, spans, _ = renderer(plan, speakers[speaker_of(plan)], 3)
        x = samples.astype(np.float64)
        inside = np.zeros(len(x), bool)
        for start, end, _ in spans:
            a, b = int(round(start * 16000)), int(round(end * 16000))
            inside[a:b] = True
            assert rms(x[a:a + 320]) > 1 and rms(x[b - 320:b]) > 1  # tight: sound at both ends
        assert not x[~inside].any()
        assert rms(x[inside]) > 300


@needs_flite
def test_kal_at_8_khz_is_resampled_to_the_same_speech_as_kal16(tmp_path):
    """kal writes 8 kHz, kal16 16 kHz: the same word and settings come out alike at SR, and
    a timbre above 1 raises the formants but not the pitch or the length."""
    binary = flite_corpus.flite_version()[0]
    delivery = {"rate": 1.0, "pitch": 120.0, "range": 12.0}
    said = {}
    for voice, timbre in (("kal", 1.0), ("kal16", 1.0), ("kal16", 1.05)):
        y = np.concatenate([flite_corpus.speak_word(
            binary, voice, flite_corpus.word_settings(delivery, timbre, 0.0), timbre, word,
            tmp_path / "w.wav") for word in ("tomorrow", "morning")])
        said[voice, timbre] = (len(y) / 16000, median_f0(y / 32768))
    (kal_s, kal_f0), (kal16_s, kal16_f0) = said["kal", 1.0], said["kal16", 1.0]
    assert kal_s == pytest.approx(kal16_s, rel=0.05)
    assert kal_f0 == pytest.approx(kal16_f0, rel=0.05)
    assert said["kal16", 1.05] == pytest.approx(said["kal16", 1.0], rel=0.03)


@needs_flite
def test_a_word_is_cut_where_flite_speaks_it(tmp_path):
    """kal clicks before "wow", a tenth of a second ahead of the word: the cut leaves it out
    but keeps all the word, from flite's first phone to its last."""
    binary = flite_corpus.flite_version()[0]
    x, rate, segments = flite_corpus._flite(binary, "kal16", {}, "wow", tmp_path / "w.wav")
    y = flite_corpus.to_sr(x, rate)
    start, end = segments[0][1], segments[-2][1]
    assert rms(y[:int(0.04 * 16000)]) > 100  # the click, before 40 ms
    a, b = flite_corpus.word_bounds(y, start, end)
    assert start - 0.03 < a / 16000 < start + 0.03
    assert b / 16000 > end - 0.03
    assert np.sum(y[a:b] ** 2) > 0.999 * np.sum(y[int(start * 16000):] ** 2)


@needs_flite
def test_emotion_is_heard_in_the_voice():
    """The same short utterances spoken angry, neutral and sad, with the room: louder,
    higher and faster in that order, on average."""
    plans, speakers = short_plans(3, words=(3, 4))
    renderer = flite_corpus.FliteRenderer()
    heard = {}
    for code in ("ang", "neu", "sad"):
        loudness, pitch, per_word = [], [], []
        for plan in plans:
            spoken = dataclasses.replace(plan, voice_code=code)
            samples, spans, _ = renderer(spoken, speakers[speaker_of(plan)], 0)
            x = samples / 32768
            speech = np.concatenate([x[int(s * 16000):int(e * 16000)] for s, e, _ in spans])
            loudness.append(rms(speech))
            pitch.append(median_f0(speech))
            per_word.append(len(speech) / 16000 / len(spans))
        heard[code] = (np.mean(loudness), np.mean(pitch), np.mean(per_word))
    (ang_rms, ang_f0, ang_s), (neu_rms, neu_f0, neu_s), (sad_rms, sad_f0, sad_s) = (
        heard["ang"], heard["neu"], heard["sad"])
    assert ang_rms > 1.2 * neu_rms > 1.2 * sad_rms
    assert ang_f0 > 1.03 * neu_f0 > 1.03 * sad_f0
    assert sad_s > 1.1 * neu_s > 1.05 * ang_s


def test_no_single_cue_gives_the_emotion_away():
    """Per-utterance jitter: each cue's range for one emotion overlaps its neighbours'."""
    _, speakers, _ = sample_corpus.plan_corpus(60, seed=0)
    voices = [flite_corpus.speaker_voice(s) for s in speakers.values()]
    rng = np.random.default_rng(0)
    codes = ("neu", "hap", "exc", "sad", "ang")
    drawn = {code: [flite_corpus.draw_delivery(rng, voices[i % 10], code) for i in range(400)]
             for code in codes}
    for cue in ("rate", "pitch", "range", "amplitude"):
        values = {code: np.array([d[cue] for d in ds]) for code, ds in drawn.items()}
        for a, b in itertools.combinations(codes, 2):
            lo, hi = sorted((a, b), key=lambda c: np.median(values[c]))
            assert np.percentile(values[lo], 90) > np.percentile(values[hi], 10), (cue, a, b)
    for cue in ("rate", "pitch", "range", "amplitude"):  # and still, on average, told apart
        assert np.mean([d[cue] for d in drawn["exc"]]) > np.mean([d[cue] for d in drawn["sad"]])


def test_missing_flite_is_one_line_with_the_install_command(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    out = tmp_path / "corpus"
    result = emoalign("sample-corpus", out, "--voice", "flite", "--utterances", 20,
                      env={"PATH": str(empty)})
    assert_one_line_error(result, "--voice flite needs flite", "not on PATH",
                          "apt-get install flite")
    assert not out.exists()


def test_missing_flite_is_a_user_error_in_process(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match=r"^--voice flite needs flite, which is not installed"):
        flite_corpus.FliteRenderer()


@needs_flite
def test_stress_stays_espeak_ngs(tmp_path):
    out = tmp_path / "corpus"
    with pytest.raises(UserError, match=r"--stress needs --voice tts"):
        sample_corpus.write(out, 20, 0, renderer=flite_corpus.FliteRenderer(), stress=True)
    assert not out.exists()
