"""The feature store: torchaudio MFCCs, identical whatever the workers, cached, self-checking,
normalised with training statistics only."""

import json
import os

import numpy as np
import pytest
import soundfile
import torch
import torchaudio

from components import feature_store, features, ingest, outputs
from components.config import FeaturesConfig
from conftest import assert_one_line_error, emoalign
from model.features import Extractor, FeatureSpec, extract, stack_frames


@pytest.fixture(scope="module")
def manifest(small_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("ingest")
    ingest.run(small_corpus, out)
    return out / outputs.MANIFEST


@pytest.fixture(scope="module")
def store(manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("features") / "store"
    # MFCCs alone, to compare with torchaudio directly (pitch and energy: their own tests).
    features.run(manifest, out, FeaturesConfig(workers=1, dtype="float32", pitch=False,
                                               energy=False))
    return feature_store.FeatureStore(out, verify=True)


@pytest.fixture(scope="module")
def wavs(manifest) -> dict[str, str]:
    m = outputs.read_manifest(manifest)
    return dict(zip(m["utt_id"], m["wav_path"]))


def test_mfcc_matches_a_direct_torchaudio_call(store, wavs):
    utt = store.index["utt_id"].iloc[3]
    row = store.index.iloc[3]
    audio, rate = soundfile.read(wavs[utt], dtype="float32")
    mfcc = torchaudio.transforms.MFCC(
        sample_rate=16000, n_mfcc=13,
        melkwargs={"n_fft": 512, "win_length": 400, "hop_length": 160, "n_mels": 40})
    coefficients = mfcc(torch.from_numpy(audio))
    delta = torchaudio.functional.compute_deltas(coefficients, win_length=5)
    delta2 = torchaudio.functional.compute_deltas(delta, win_length=5)
    expected = torch.cat([coefficients, delta, delta2]).T.numpy()
    assert store.get(utt).shape == expected.shape == (row["length"], 39)
    np.testing.assert_allclose(store.get(utt), expected, rtol=1e-5, atol=1e-4)
    assert len(expected) == 1 + len(audio) // 160  # 10 ms hop, centred frames


def test_serving_extraction_equals_the_store(store, wavs):
    spec = store.spec
    for utt in store.index["utt_id"].iloc[:5]:
        audio, _ = soundfile.read(wavs[utt], dtype="float32")
        np.testing.assert_array_equal(extract(audio, spec), store.get(utt))


def test_reads_are_memory_mapped_views(store):
    frames = store.get(store.index["utt_id"].iloc[0])
    assert isinstance(frames, np.memmap) and not frames.flags.owndata


def test_worker_count_does_not_change_a_byte(manifest, tmp_path):
    one = features.run(manifest, tmp_path / "one", FeaturesConfig(workers=1))
    two = features.run(manifest, tmp_path / "two", FeaturesConfig(workers=2))
    for name in ("frames.bin", "index.parquet", "normalization.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert one.n_frames == two.n_frames > 0


def test_cache_hit_and_misses(manifest, tmp_path, small_corpus):
    config = FeaturesConfig(workers=1)
    first = features.run(manifest, tmp_path / "s", config)
    assert not first.reused
    again = features.run(manifest, tmp_path / "s", config)
    assert again.reused and "reused" in again.message
    other = features.run(manifest, tmp_path / "s", FeaturesConfig(workers=1, n_mfcc=20))
    assert not other.reused and "stale" in other.message
    assert feature_store.FeatureStore(tmp_path / "s").spec.n_mfcc == 20

    # A re-recorded wav (new mtime) is noticed; with content hashing, a mere touch is not.
    wav = outputs.read_manifest(manifest)["wav_path"].iloc[0]
    st = os.stat(wav)
    key = features.cache_key(outputs.read_manifest(manifest), config)
    os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        assert features.cache_key(outputs.read_manifest(manifest), config) != key
        hashed = FeaturesConfig(workers=1, content_hash=True)
        key = features.cache_key(outputs.read_manifest(manifest), hashed)
        os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
        assert features.cache_key(outputs.read_manifest(manifest), hashed) == key
    finally:
        os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_shared_cache_serves_a_second_output_folder(manifest, tmp_path):
    config = FeaturesConfig(workers=1, cache_dir=str(tmp_path / "cache"))
    first = features.run(manifest, tmp_path / "run1", config)
    second = features.run(manifest, tmp_path / "run2", config)
    assert not first.reused and second.reused
    assert first.store_dir == second.store_dir and first.store_dir.parent == tmp_path / "cache"
    assert os.path.samefile(tmp_path / "run2" / "frames.bin", first.store_dir / "frames.bin")
    assert outputs.StoreFiles(tmp_path / "run2").problem() is None


@pytest.mark.parametrize("damage, reason", [
    (lambda d: _flip_byte(d / "frames.bin"), "checksum mismatch in frames.bin"),
    (lambda d: (d / "store.json").unlink(), "incomplete"),
    (lambda d: (d / "frames.bin").write_bytes(b"\0" * 10), "wrong size"),
    (lambda d: (d / "index.parquet").write_bytes(b"junk"), "checksum mismatch in index"),
])
def test_a_damaged_store_is_rebuilt_never_used(manifest, tmp_path, damage, reason):
    config = FeaturesConfig(workers=1)
    features.run(manifest, tmp_path / "s", config)
    good = (tmp_path / "s" / "frames.bin").read_bytes()
    damage(tmp_path / "s")
    assert reason in outputs.StoreFiles(tmp_path / "s").problem()
    with pytest.raises(Exception, match="feature store"):
        feature_store.FeatureStore(tmp_path / "s", verify=True)
    result = features.run(manifest, tmp_path / "s", config)
    assert not result.reused and reason in result.message
    assert (tmp_path / "s" / "frames.bin").read_bytes() == good


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_leftover_partial_build_is_ignored(manifest, tmp_path):
    (tmp_path / "s.partial-99999").mkdir()
    (tmp_path / "s.partial-99999" / "frames.bin").write_bytes(b"half")
    result = features.run(manifest, tmp_path / "s", FeaturesConfig(workers=1))
    assert not result.reused and outputs.StoreFiles(tmp_path / "s").problem() is None


def test_normalisation_is_fitted_on_training_sessions_only(store):
    frames = {u: np.asarray(store.get(u), np.float64) for u in store.index["utt_id"]}
    for held_out in (1, 5):
        train = [u for u, s in zip(store.index["utt_id"], store.index["session"])
                 if s != held_out]
        stacked = np.concatenate([frames[u] for u in train])
        normalizer = store.normalizer(held_out)
        np.testing.assert_allclose(normalizer.mean, stacked.mean(0), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(normalizer.std, stacked.std(0), rtol=1e-3, atol=1e-4)
    # The held-out session's statistics differ, so leaking them would show.
    assert not np.allclose(store.normalizer(5).mean, store.normalizer(None).mean)
    normalized = store.normalizer(5).apply(np.concatenate(
        [frames[u] for u, s in zip(store.index["utt_id"], store.index["session"]) if s != 5]))
    np.testing.assert_allclose(normalized.mean(0), 0, atol=1e-3)
    np.testing.assert_allclose(normalized.std(0), 1, atol=1e-2)


def test_speaker_normalisation_falls_back_to_training_statistics(store):
    normalizer = store.normalizer(5, mode="speaker")
    utt = store.index["utt_id"].iloc[0]
    speaker = store.index["speaker"].iloc[0]
    own = np.asarray(store.get(utt), np.float32)
    mean, std = normalizer.speakers[speaker]
    np.testing.assert_allclose(normalizer.apply(own, speaker), (own - mean) / std, rtol=1e-6)
    np.testing.assert_allclose(normalizer.apply(own, "Unknown"),
                               (own - normalizer.mean) / normalizer.std, rtol=1e-6)


def test_stacking_and_subsampling():
    frames = np.arange(10 * 2, dtype=np.float32).reshape(10, 2)
    stacked = stack_frames(frames, stack=3, subsample=3)
    assert stacked.shape == (4, 6)
    np.testing.assert_array_equal(stacked[0], [0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(stacked[-1], [18, 19, 18, 19, 18, 19])  # last frame repeated
    spec = FeatureSpec(stack=3, subsample=3, pitch=False, energy=False)
    out = Extractor(spec)(np.random.default_rng(0).standard_normal(16000).astype(np.float32))
    assert out.shape == (34, spec.dim) and spec.dim == 117


def test_an_unreadable_wav_stops_the_step_naming_it(manifest, tmp_path):
    m = outputs.read_manifest(manifest)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF....")
    m.loc[2, "wav_path"] = str(broken)
    m.to_parquet(tmp_path / "manifest.parquet")
    with pytest.raises(features.FeatureInputError, match=f"cannot read {broken}"):
        features.run(tmp_path / "manifest.parquet", tmp_path / "s", FeaturesConfig(workers=1))
    result = emoalign("features", "--manifest", tmp_path / "manifest.parquet", "--out",
                      tmp_path / "s")
    assert_one_line_error(result, "cannot read", m.loc[2, "utt_id"])
    assert not (tmp_path / "s" / "store.json").exists()


@pytest.mark.slow  # the step's command in processes of its own; reuse in process: above
def test_cli_features_reuses(manifest, tmp_path):
    first = emoalign("features", "--manifest", manifest, "--out", tmp_path / "s")
    assert first.returncode == 0, first.stderr
    assert "built the feature store" in first.stdout
    second = emoalign("features", "--manifest", manifest, "--out", tmp_path / "s")
    assert "reused the feature store" in second.stdout
    meta = json.loads((tmp_path / "s" / "store.json").read_text())
    # 13 MFCCs, voicing, log-F0 and log energy, each with deltas and delta-deltas.
    assert meta["dtype"] == "float16" and meta["dim"] == (13 + 3) * 3


# ---- the authors' features: magnitude spectrum, pre-emphasis, a length limit ------------

SPECTRUM = FeatureSpec(kind="spectrum", deltas=False, delta_deltas=False, pitch=False,
                       energy=False)


def test_the_magnitude_spectrum_with_pre_emphasis_and_a_length_limit():
    from dataclasses import replace

    audio = (0.1 * np.random.default_rng(0).standard_normal(40000)).astype(np.float32)
    frames = extract(audio, SPECTRUM)  # 2.5 s
    assert SPECTRUM.dim == 257 and frames.shape == (1 + 40000 // 160, 257)
    expected = torch.stft(torch.from_numpy(audio), 512, 160, 400, torch.hann_window(400),
                          center=True, pad_mode="reflect", return_complex=True).abs().T
    np.testing.assert_allclose(frames, expected.numpy(), rtol=1e-4, atol=1e-5)
    # Pre-emphasis filters the waveform first: x[t] - 0.97 x[t-1].
    emphasised = extract(audio, replace(SPECTRUM, pre_emphasis=0.97))
    filtered = np.concatenate([audio[:1], audio[1:] - 0.97 * audio[:-1]])
    np.testing.assert_allclose(emphasised, extract(filtered, SPECTRUM), rtol=1e-5, atol=1e-6)
    assert not np.allclose(emphasised, frames, rtol=0.1)
    # max_seconds cuts (MFCCs too); a shorter utterance is left whole, never padded.
    for spec in (SPECTRUM, FeatureSpec(pitch=False, energy=False)):
        cut = extract(audio, replace(spec, max_seconds=1.0))
        np.testing.assert_array_equal(cut, extract(audio[:16000], spec))
        assert len(cut) == 101
        assert len(extract(audio, replace(spec, max_seconds=7.0))) == 251
    # Deltas and prosody join the spectrum as they join MFCCs.
    assert FeatureSpec(kind="spectrum", pitch=True, energy=True).dim == (257 + 3) * 3


def test_new_feature_settings_change_the_store_key_only_when_used(manifest):
    """Stores made before kind, pre_emphasis and max_seconds existed keep their cache key."""
    rows = outputs.read_manifest(manifest)
    assert set(FeatureSpec().to_dict()) == {"sample_rate", *FeatureSpec.SAVED_ALWAYS}
    today = features.cache_key(rows, FeaturesConfig())
    assert features.cache_key(rows, FeaturesConfig(kind="mfcc", pre_emphasis=0.0,
                                                   max_seconds=0.0)) == today
    used = {features.cache_key(rows, FeaturesConfig(**setting)) for setting in
            ({"kind": "spectrum"}, {"pre_emphasis": 0.97}, {"max_seconds": 7.0})}
    assert len(used) == 3 and today not in used


def test_pitch_and_energy_are_on_by_default_and_their_absence_means_off():
    """One default, in model/spec.py. A store or bundle saved before the settings existed
    lacks them and was made without them; today's default is saved (and keyed) byte for
    byte as when the config set it over a default of off."""
    assert FeaturesConfig().spec() == FeatureSpec() and FeatureSpec().pitch
    plain = FeatureSpec(pitch=False, energy=False)
    older = {k: v for k, v in plain.to_dict().items() if k not in ("pitch", "energy")}
    assert FeatureSpec.from_dict(older) == plain
    assert FeatureSpec.from_dict(FeatureSpec().to_dict()) == FeatureSpec()
    assert json.dumps(FeaturesConfig().spec().to_dict()) == (
        '{"sample_rate": 16000, "n_mfcc": 13, "n_mels": 40, "win_ms": 25.0, "hop_ms": 10.0, '
        '"deltas": true, "delta_deltas": true, "stack": 1, "subsample": 1, "pitch": true, '
        '"energy": true, "f0_min": 60.0, "f0_max": 500.0}')


def test_a_spectrum_store_serves_the_same_values(manifest, wavs, tmp_path):
    features.run(manifest, tmp_path / "s", FeaturesConfig(
        workers=1, kind="spectrum", pre_emphasis=0.97, max_seconds=1.5, deltas=False,
        delta_deltas=False, pitch=False, energy=False, normalization="global"))
    store = feature_store.FeatureStore(tmp_path / "s", verify=True)
    assert (store.spec.kind, store.spec.max_seconds) == ("spectrum", 1.5)
    assert store.meta["dim"] == 257
    assert store.index["length"].max() == 151  # 1.5 s at most
    for utt in store.index["utt_id"].iloc[:3]:
        audio, _ = soundfile.read(wavs[utt], dtype="float32")
        np.testing.assert_array_equal(extract(audio, store.spec).astype(np.float16),
                                      store.get(utt))


# ---- prosody: voicing, log-F0, log energy -----------------------------------------------

PROSODY = FeatureSpec(pitch=True, energy=True)


def _tone(f0: float, seconds: float = 1.5, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    # A harmonic tone with a slow vibrato-free envelope, as a sustained vowel is.
    return (0.3 * np.sin(2 * np.pi * f0 * t) + 0.15 * np.sin(2 * np.pi * 2 * f0 * t)
            + 0.05 * np.sin(2 * np.pi * 3 * f0 * t)).astype(np.float32)


@pytest.mark.parametrize("f0", [75.0, 118.0, 210.0, 333.0, 470.0])
def test_a_tones_f0_is_recovered_within_5_percent(f0):
    frames = extract(_tone(f0), PROSODY)
    assert frames.shape[1] == PROSODY.dim == (13 + 3) * 3
    voicing, log_f0 = frames[:, 13], frames[:, 14]
    inner = slice(5, -5)  # the zero padding at the edges is no tone
    assert np.all(voicing[inner] > 0.8)
    np.testing.assert_allclose(np.exp(log_f0[inner]), f0, rtol=0.05)


def test_a_gliding_tone_is_tracked_frame_by_frame():
    sr, seconds = 16000, 2.0
    t = np.arange(int(sr * seconds)) / sr
    f = 100 + 100 * t / seconds  # 100 -> 200 Hz
    audio = (0.3 * np.sin(2 * np.pi * np.cumsum(f) / sr)).astype(np.float32)
    log_f0 = extract(audio, PROSODY)[:, 14]
    centres = np.arange(len(log_f0)) * 0.01
    inner = (centres > 0.1) & (centres < seconds - 0.1)
    np.testing.assert_allclose(np.exp(log_f0[inner]), np.interp(centres[inner], t, f),
                               rtol=0.05)


def test_silence_and_noise_are_unvoiced_and_energy_follows_loudness():
    sr = 16000
    silence = np.zeros(sr, np.float32)
    noise = np.random.default_rng(0).normal(0, 0.1, sr).astype(np.float32)
    for audio in (silence, noise):
        assert np.all(extract(audio, PROSODY)[:, 13] == 0)  # voicing
    # Unvoiced stretches between two tones take log-F0 interpolated between them.
    gap = np.concatenate([_tone(100, 0.5), silence[:8000], _tone(200, 0.5)])
    log_f0 = extract(gap, PROSODY)[:, 14]
    middle = np.exp(log_f0[70:80])
    assert np.all((middle > 100) & (middle < 200)) and np.all(np.diff(middle) > 0)
    loud, soft = (extract(a * _tone(150), PROSODY)[10:-10, 15].mean() for a in (1.0, 0.1))
    assert loud - soft == pytest.approx(20.0, abs=0.5)  # dB: 10x the amplitude
    assert extract(silence, PROSODY)[:, 15].max() == pytest.approx(-100.0)


def test_prosody_is_appended_and_mfccs_are_unchanged(wavs):
    audio, _ = soundfile.read(next(iter(wavs.values())), dtype="float32")
    plain = extract(audio, FeatureSpec(deltas=False, delta_deltas=False, pitch=False,
                                       energy=False))
    with_prosody = extract(audio, FeatureSpec(deltas=False, delta_deltas=False))
    np.testing.assert_array_equal(with_prosody[:, :13], plain)
    assert with_prosody.shape == (len(plain), 16)
    only_energy = extract(audio, FeatureSpec(deltas=False, delta_deltas=False, pitch=False))
    np.testing.assert_array_equal(only_energy[:, 13], with_prosody[:, 15])


def test_a_prosody_store_serves_the_same_values(manifest, wavs, tmp_path):
    """Training reads the store; serving calls extract() with the bundle's spec: equal."""
    features.run(manifest, tmp_path / "s", FeaturesConfig(workers=2, dtype="float32",
                                                           pitch=True, energy=True, n_mfcc=20))
    store = feature_store.FeatureStore(tmp_path / "s", verify=True)
    assert store.spec.pitch and store.spec.n_mfcc == 20 and store.spec.dim == 23 * 3
    for utt in store.index["utt_id"].iloc[:5]:
        audio, _ = soundfile.read(wavs[utt], dtype="float32")
        np.testing.assert_array_equal(extract(audio, store.spec), store.get(utt))
    # The sample corpus' voices are voiced most of the time they speak.
    voicing = np.concatenate([store.get(u)[:, 20] for u in store.index["utt_id"].iloc[:20]])
    assert 0.2 < (voicing > 0).mean() < 0.95


def test_serving_normalises_a_new_speaker_with_its_own_statistics_once_it_has_enough():
    from model.features import Normalizer

    rng = np.random.default_rng(0)
    known = Normalizer(np.zeros(3, np.float32), np.ones(3, np.float32),
                       {"Ses01F": (np.full(3, 5, np.float32), np.full(3, 2, np.float32))})
    new = [rng.normal(10, 3, (400, 3)).astype(np.float32) for _ in range(3)]
    frames = [*new, rng.normal(0, 1, (50, 3)).astype(np.float32)]
    speakers = ["guest", "guest", "guest", "Ses01F"]
    enrolled = known.with_speakers_from(frames, speakers, min_frames=1000)
    pooled = np.concatenate(new).astype(np.float64)
    mean, std = enrolled.speakers["guest"]
    np.testing.assert_allclose(mean, pooled.mean(0), rtol=1e-5)
    np.testing.assert_allclose(std, pooled.std(0), rtol=1e-4)
    normalised = np.concatenate([enrolled.apply(f, "guest") for f in new])
    np.testing.assert_allclose(normalised.mean(0), 0, atol=1e-4)
    # A speaker the model knows keeps its own statistics; too little speech, or global
    # normalisation, changes nothing.
    np.testing.assert_array_equal(enrolled.speakers["Ses01F"][0], np.full(3, 5))
    assert known.with_speakers_from(frames, speakers, min_frames=1201) is known
    plain = Normalizer(np.zeros(3, np.float32), np.ones(3, np.float32))
    assert plain.with_speakers_from(frames, speakers, min_frames=1) is plain
