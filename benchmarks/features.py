"""Feature extraction speed on an IEMOCAP-size corpus.

    .venv/bin/python benchmarks/features.py [--corpus DIR] [--utterances 10039]

Prints audio-seconds per wall-second for the whole corpus with every core, the speed-up
from parallelism (1 worker against all, same utterances, same run), the ratio against
librosa.feature.mfcc with the same settings (25 ms / 10 ms, 40 mel bands, 13 MFCCs +
deltas + delta-deltas, one thread each, same audio, same run), the time to reuse an
unchanged store, and the extraction's peak RSS (measured before the comparisons load
their waveforms). Goal on 2 cores: the whole corpus in 60 s or less, at least
3x librosa, under 2 GB RSS.
"""

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import soundfile  # noqa: E402
import torch  # noqa: E402

from components import features, ingest, outputs  # noqa: E402
from components.config import FeaturesConfig, IngestConfig  # noqa: E402
from corpora import sample_corpus  # noqa: E402
from model.features import Extractor, FeatureSpec  # noqa: E402


def librosa_features(audio: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    import librosa

    mfcc = librosa.feature.mfcc(y=audio, sr=spec.sample_rate, n_mfcc=spec.n_mfcc, n_fft=512,
                                win_length=400, hop_length=160, n_mels=spec.n_mels)
    delta = librosa.feature.delta(mfcc, width=5)
    delta2 = librosa.feature.delta(mfcc, width=5, order=2)
    return np.concatenate([mfcc, delta, delta2]).T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, help="a release root (default: generate one)")
    parser.add_argument("--utterances", type=int, default=10_039)
    parser.add_argument("--subset", type=int, default=1500,
                        help="utterances for the 1-worker and librosa comparisons")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="emoalign-features-"))
    try:
        corpus = args.corpus
        if corpus is None:
            corpus = scratch / "IEMOCAP_full_release"
            sample_corpus.generate(corpus, args.utterances, seed=0,
                                   workers=len(os.sched_getaffinity(0)))
        manifest, _ = ingest.scan(corpus, IngestConfig())
        manifest_path = scratch / "manifest.parquet"
        outputs.write_manifest(manifest, manifest_path)
        audio_s = float(manifest["duration_s"].sum())
        cores = len(os.sched_getaffinity(0))
        print(f"machine: {cores} cores; corpus {len(manifest)} utterances, "
              f"{audio_s / 3600:.2f} h")

        start = time.perf_counter()
        result = features.run(manifest_path, scratch / "store", FeaturesConfig(workers=cores))
        full = time.perf_counter() - start
        print(f"whole corpus, {cores} workers: {full:.1f} s, {audio_s / full:.0f} audio-s per "
              f"wall-s ({result.n_frames:,} frames)")
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"peak RSS of the whole-corpus extraction: {own:.0f} MB main process, "
              f"{child:.0f} MB largest worker")
        start = time.perf_counter()
        again = features.run(manifest_path, scratch / "store", FeaturesConfig(workers=cores))
        print(f"rerun on unchanged inputs: {time.perf_counter() - start:.2f} s "
              f"(reused: {again.reused})")

        subset = manifest.iloc[:: max(1, len(manifest) // args.subset)].head(args.subset)
        subset_path = scratch / "subset.parquet"
        outputs.write_manifest(subset.reset_index(drop=True), subset_path)
        sub_audio = float(subset["duration_s"].sum())
        times = {}
        for workers in (1, cores):
            start = time.perf_counter()
            features.run(subset_path, scratch / f"sub{workers}", FeaturesConfig(workers=workers))
            times[workers] = time.perf_counter() - start
        print(f"subset {len(subset)} utterances ({sub_audio / 60:.0f} min): 1 worker "
              f"{times[1]:.1f} s, {cores} workers {times[cores]:.1f} s, speed-up "
              f"{times[1] / times[cores]:.2f}x")

        spec = FeatureSpec(pitch=False, energy=False)  # the MFCCs librosa computes too
        waves = [soundfile.read(p, dtype="float32")[0] for p in subset["wav_path"]]
        torch.set_num_threads(1)
        extractor = Extractor(spec)
        start = time.perf_counter()
        ours = [extractor(w) for w in waves]
        t_ours = time.perf_counter() - start
        librosa_features(waves[0], spec)  # first call compiles numba kernels: not timed
        start = time.perf_counter()
        theirs = [librosa_features(w, spec) for w in waves]
        t_librosa = time.perf_counter() - start
        assert [len(a) for a in ours] == [len(b) for b in theirs]
        print(f"one thread, same {len(waves)} waveforms in memory: emoalign (torchaudio) "
              f"{t_ours:.2f} s = {sub_audio / t_ours:.0f}x real time; librosa "
              f"{t_librosa:.2f} s; ratio {t_librosa / t_ours:.1f}x")

    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
