"""Audio alone: the speech recogniser (model/recognizer.py), its word error rate, the cache
of recognised transcripts (components/transcripts.py), prediction without a transcript
through the pyfunc, and the improvised and scripted utterances scored apart."""

import importlib.util
import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile

from components import outputs, reporting
from components.config import load_config
from components.transcripts import RecognitionError, Transcriber, recognised_rows
from model import pyfunc, recognizer
from model.metrics import scores, word_error_rate, word_errors

LEGACY = Path(__file__).parent / "data" / "pyfunc_124320b"
RATE = recognizer.SAMPLE_RATE


class Scripted:
    """A recogniser that hears the same words in any sound, counting how often it is asked:
    the interface a real one (pocketsphinx, faster-whisper) fills."""

    package = "numpy"  # installed wherever the tests run
    install = "pip install nothing"
    calls = 0

    @classmethod
    def version(cls) -> str:
        return "1"

    def __call__(self, audio: np.ndarray) -> str:
        type(self).calls += 1
        return "oh no not again"


@pytest.fixture
def scripted(monkeypatch):
    """`pocketsphinx` answered by Scripted: the paths around recognition, without it."""
    monkeypatch.setitem(recognizer.RECOGNIZERS, "pocketsphinx", Scripted)
    recognizer.recognizer.cache_clear()
    Scripted.calls = 0
    yield Scripted
    recognizer.recognizer.cache_clear()


def tone(seconds: float = 1.0, level: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (level * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def write_wav(path: Path, audio: np.ndarray) -> Path:
    soundfile.write(path, audio, RATE, subtype="PCM_16")
    return path


# ---- the recogniser -------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("espeak-ng") is None,
                    reason="espeak-ng is not installed: apt-get install espeak-ng")
@pytest.mark.skipif(importlib.util.find_spec("pocketsphinx") is None,
                    reason="pocketsphinx is not installed: pip install pocketsphinx")
def test_pocketsphinx_hears_words_of_a_short_espeak_utterance():
    from scipy.signal import resample_poly

    truth = "we are getting married"
    spoken = subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "--stdout", truth],
                            capture_output=True, check=True).stdout
    audio, rate = soundfile.read(io.BytesIO(spoken), dtype="float32")
    audio = resample_poly(audio, RATE, rate).astype(np.float32)
    pause = np.zeros(RATE // 4, np.float32)
    heard = recognizer.transcribe(np.concatenate([pause, audio, pause]), "pocketsphinx")
    assert set(heard.split()) & set(truth.split()), heard
    # Silence is no words, though PocketSphinx, asked, names one ("dog").
    assert recognizer.transcribe(np.zeros(RATE, np.float32), "pocketsphinx") == ""


def test_a_recogniser_that_is_not_installed_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "pocketsphinx", None)  # import fails
    recognizer.recognizer.cache_clear()
    try:
        with pytest.raises(recognizer.RecognizerError,
                           match=r"speech recogniser 'pocketsphinx' is not installed: "
                                 r"pip install pocketsphinx$"):
            recognizer.transcribe(tone(), "pocketsphinx")
    finally:
        recognizer.recognizer.cache_clear()
    with pytest.raises(recognizer.RecognizerError, match="unknown speech recogniser 'nope'"):
        recognizer.identity("nope")


def test_only_missing_transcripts_are_recognised_and_each_says_where_it_came_from(scripted):
    texts, sources = recognizer.fill_in(
        [tone(), tone(), tone(), np.zeros(RATE, np.float32), tone(0)],
        ["I am angry", "", None, "", float("nan")])
    assert texts == ["I am angry", "oh no not again", "oh no not again", "", ""]
    assert sources == ["given", "recognised", "recognised", "none", "none"]
    assert scripted.calls == 2  # not asked of the given transcript, the silence, no sound


# ---- word error rate ------------------------------------------------------------------

def test_word_errors_count_substitutions_deletions_and_insertions():
    assert word_errors("a b c".split(), "a b c".split()) == 0
    assert word_errors("a b c".split(), "a x c".split()) == 1
    assert word_errors("a b c".split(), "a c".split()) == 1
    assert word_errors("a b c".split(), "a b c d e".split()) == 2
    assert word_errors([], "a b".split()) == 2
    assert word_errors("we are getting married".split(),
                       "we are getting what i read".split()) == 3


def test_word_error_rate_pools_utterances_after_the_tokenizers_normalisation():
    result = word_error_rate(["We are getting MARRIED!", "[LAUGHTER] Oh, no."],
                             ["we are getting what i read", "oh no"])
    assert result == {"wer": 3 / 6, "word_errors": 3, "words": 6}
    assert word_error_rate(["[BREATHING]"], ["um"])["wer"] is None


# ---- the cache ------------------------------------------------------------------------

def test_recognised_transcripts_are_cached_by_the_audio_and_the_recogniser(scripted, tmp_path):
    wavs = {"u1": write_wav(tmp_path / "u1.wav", tone(1.0)),
            "u2": write_wav(tmp_path / "u2.wav", tone(0.5)),
            "u3": write_wav(tmp_path / "u3.wav", tone(1.0))}  # u1's bytes again
    first = Transcriber("pocketsphinx", tmp_path / "cache").recognise(wavs)
    assert first.texts == dict.fromkeys(wavs, "oh no not again")
    assert first.recognised == scripted.calls == 2  # u3 is u1's audio
    assert first.audio_seconds == pytest.approx(1.5) and first.speed()["utterances_per_s"] > 0
    again = Transcriber("pocketsphinx", tmp_path / "cache").recognise(wavs)  # another run
    assert again.texts == first.texts and again.recognised == 0 and scripted.calls == 2
    (entry,) = {p.parent.parent.name for p in (tmp_path / "cache").rglob("*.txt")}
    assert entry == "pocketsphinx-1"  # a new recogniser version recognises again
    write_wav(wavs["u2"], tone(0.7))  # the file changed: recognised again
    assert Transcriber("pocketsphinx", tmp_path / "cache").recognise(wavs).recognised == 1


def test_recognised_rows_replace_the_transcripts_and_measure_their_wer(scripted, tmp_path):
    rows = pd.DataFrame({"utt_id": ["a", "b"], "transcript": ["oh no not now", "fine"],
                         "wav_path": [str(write_wav(tmp_path / f"{u}.wav", tone()))
                                      for u in "ab"]}).set_index("utt_id", drop=False)
    replaced, summary = recognised_rows(rows, ["a"], Transcriber("pocketsphinx"))
    assert replaced["transcript"].tolist() == ["oh no not again", "fine"]
    assert rows.at["a", "transcript"] == "oh no not now"  # the caller's rows untouched
    assert (summary["wer"], summary["words"], summary["utterances"]) == (0.25, 4, 1)
    assert summary["recognizer"] == "pocketsphinx-1"
    with pytest.raises(RecognitionError, match="cannot read"):
        Transcriber("pocketsphinx").recognise({"x": str(tmp_path / "gone.wav")})


# ---- the pyfunc without a transcript --------------------------------------------------

def test_the_pyfunc_recognises_a_missing_transcript_and_says_so(scripted, small_corpus,
                                                                 tmp_path):
    wav = str(next(small_corpus.glob("Session1/sentences/wav/*/*.wav")))
    silent = str(write_wav(tmp_path / "silent.wav", np.zeros(RATE, np.float32)))
    model = pyfunc.load(str(LEGACY))
    out = model.predict(pd.DataFrame({"wav": [wav, wav, silent],
                                      "transcript": ["", "oh no not again", None]}))
    assert out["transcript_source"].tolist() == ["recognised", "given", "none"]
    assert out["transcript"].tolist() == ["oh no not again"] * 2 + [""]
    # The recognised words reached the model: as if they had been given.
    probabilities = out[[c for c in out.columns if c.startswith("p_")]].to_numpy()
    np.testing.assert_allclose(probabilities[0], probabilities[1], atol=1e-6)
    assert np.allclose(probabilities.sum(1), 1, atol=1e-5)


# ---- improvised and scripted apart ----------------------------------------------------

def _manifest(tmp_path: Path) -> Path:
    """Six labelled utterances, three of them scripted, and one outside the class set."""
    rows = []
    for i, (label, scripted) in enumerate([("happy", False), ("sad", False), ("sad", False),
                                           ("happy", True), ("sad", True), ("happy", True),
                                           (None, False)]):
        rows.append({name: None for name in outputs.MANIFEST_SCHEMA.names} | {
            "utt_id": f"Ses05F_{'script' if scripted else 'impro'}01_F00{i}", "session": 5,
            "speaker": "Ses05F", "scripted": scripted, "label": label})
    path = tmp_path / "manifest.parquet"
    outputs.write_manifest(pd.DataFrame(rows), path)
    return path


def test_a_subset_keeps_the_improvised_or_the_scripted_utterances(tmp_path):
    path = _manifest(tmp_path)
    counts = {subset: len(outputs.labelled_rows(path, ["happy", "sad"], subset))
              for subset in ("all", "improvised", "scripted")}
    assert counts == {"all": 6, "improvised": 3, "scripted": 3}
    assert not outputs.labelled_rows(path, ["happy", "sad"], "scripted")["scripted"].eq(
        False).any()


def test_improvised_and_scripted_are_scored_apart_beside_the_whole(tmp_path):
    rows = outputs.labelled_rows(_manifest(tmp_path), ["happy", "sad"])
    classes = ["happy", "sad"]
    # Two seeds. Seed 0 is right on every improvised utterance and on one scripted one of
    # three; seed 1 is wrong on the first improvised one (happy called sad).
    predicted = {0: ["happy", "sad", "sad", "sad", "happy", "happy"],
                 1: ["sad", "sad", "sad", "sad", "happy", "happy"]}
    table = pd.DataFrame([{"utt_id": u, "fold": "session5", "seed": seed, "session": 5,
                           "scripted": rows.at[u, "scripted"], "label": rows.at[u, "label"],
                           "predicted": p}
                          for seed, guesses in predicted.items()
                          for u, p in zip(rows.index, guesses)])
    members = [{"fold": "session5", "seed": seed, "member": f"session5-seed{seed}",
                **{k: v for k, v in scores(
                    table[table.seed == seed]["label"].map(classes.index),
                    table[table.seed == seed]["predicted"].map(classes.index),
                    classes).items() if k in ("ua", "wa", "n")}}
               for seed in (0, 1)]
    config = load_config(None, ["ingest.classes=happy,sad", "ingest.merge_excited=false"])
    # Read back as the summarize task reads the tasks' predictions.csv.
    table.to_csv(tmp_path / "p.csv", index=False)
    metrics = reporting.summarize(members, pd.read_csv(tmp_path / "p.csv"), classes, config)
    improvised, scripted = metrics["per_subset"]["improvised"], metrics["per_subset"]["scripted"]
    # Improvised: seed 0 UA 1, WA 1; seed 1 UA (0 + 1) / 2, WA 2/3.
    assert improvised["ua"] == pytest.approx((1 + 0.5) / 2)
    assert improvised["wa"] == pytest.approx((1 + 2 / 3) / 2)
    # Scripted, in both seeds: happy called sad, sad called happy, happy right: UA
    # (1/2 + 0) / 2, WA 1/3.
    assert scripted["ua"] == pytest.approx(0.25) and scripted["ua_std"] == 0
    assert scripted["wa"] == pytest.approx(1 / 3)
    assert improvised["n"] == scripted["n"] == 6  # predictions: three utterances x two seeds
    report = "\n".join(reporting.report_lines(metrics))
    assert "improvised: WA 0.833  UA 0.750  (n=6); scripted: WA 0.333  UA 0.250  (n=6)" in report


def test_a_batch_without_a_transcript_column_asks_for_recognition(tmp_path):
    from components.registry.serving import read_requests

    (tmp_path / "a.wav").write_bytes(b"")
    (tmp_path / "batch.csv").write_text("wav\na.wav\n")
    requests = read_requests(str(tmp_path / "batch.csv"), None, None)
    assert requests.to_dict("records") == [{"wav": str(tmp_path / "a.wav"), "transcript": ""}]
    (one,) = read_requests(None, str(tmp_path / "a.wav"), None).to_dict("records")
    assert one["transcript"] == ""
    # --wav with --text and --speaker: one request that carries both.
    assert read_requests(None, str(tmp_path / "a.wav"), "hi", "Ses05M").to_dict("records") == [
        {"wav": str((tmp_path / "a.wav").resolve()), "transcript": "hi", "speaker": "Ses05M"}]
