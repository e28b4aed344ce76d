"""Features: validated manifest -> a feature store of MFCC frames, shared by every fold.

The store is a folder:
    frames.bin            every utterance's frames, back to back, (n_frames, dim) float16/32
    index.parquet         utt_id, session, speaker, offset, length (in frames)
    normalization.json    mean/std per cross-validation fold, fitted without that fold's
                          session, plus each speaker's own statistics
    store.json            spec, cache key, shape, sha256 of frames.bin and index.parquet
store.json is written last, into a folder renamed into place only when complete, so a store
killed mid-write is never taken for a finished one; a checksum mismatch means a rebuild.
"""

import hashlib
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile

from components import outputs
from components.config import FeaturesConfig
from components.errors import UserError
from components.lineage import file_sha256
from components.outputs import StoreFiles
from model.features import Extractor, Normalizer
from model.spec import FEATURE_CODE_VERSION


class FeatureInputError(UserError):
    """A wav that cannot be turned into features (validation should have quarantined it)."""


@dataclass
class FeatureResult:
    store_dir: Path     # where the store lives (the cache entry, or out_dir)
    out_dir: Path       # what the caller asked for (holds the store or links to it)
    reused: bool
    message: str
    n_utterances: int
    n_frames: int


# ---- the cache key ----------------------------------------------------------------------

def _file_digest(path: str, content: bool) -> str:
    if content:
        return file_sha256(path)
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


def cache_key(manifest: pd.DataFrame, config: FeaturesConfig) -> str:
    """Manifest rows used, their audio (size + mtime, or contents), settings, code version."""
    h = hashlib.sha256()
    h.update(json.dumps({"spec": config.spec().to_dict(), "dtype": config.dtype,
                         "code": FEATURE_CODE_VERSION}, sort_keys=True).encode())
    for utt_id, session, speaker, wav in zip(manifest["utt_id"], manifest["session"],
                                             manifest["speaker"], manifest["wav_path"]):
        try:
            digest = _file_digest(wav, config.content_hash)
        except OSError as e:
            raise FeatureInputError(f"cannot read {wav} ({utt_id}): {e.strerror}") from None
        h.update(f"{utt_id}\t{session}\t{speaker}\t{wav}\t{digest}\n".encode())
    return h.hexdigest()


# ---- extraction -------------------------------------------------------------------------

_extractor: Extractor | None = None


def _extract_batch(args: tuple) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(frames in the store's dtype, sum, sum of squares) per utterance, in order."""
    import torch

    global _extractor
    batch, spec, dtype = args
    # One thread per process: output bytes must not depend on how the work is split.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if _extractor is None or _extractor.spec != spec:
            _extractor = Extractor(spec)
        out = []
        for utt_id, wav in batch:
            try:
                audio, rate = soundfile.read(wav, dtype="float32")
            except Exception as e:
                raise FeatureInputError(f"cannot read {wav} ({utt_id}): "
                                        f"{str(e).splitlines()[0]}") from None
            if audio.ndim != 1 or rate != spec.sample_rate or len(audio) == 0:
                raise FeatureInputError(
                    f"{wav} ({utt_id}) is not mono {spec.sample_rate} Hz audio "
                    f"({rate} Hz, shape {audio.shape}); validation should have quarantined it")
            frames = _extractor(audio).astype(dtype)
            wide = frames.astype(np.float64)
            out.append((frames, wide.sum(0), np.square(wide).sum(0)))
        return out
    finally:
        torch.set_num_threads(threads)


def _batches(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def build(manifest: pd.DataFrame, store_dir: Path, config: FeaturesConfig, key: str,
          workers: int) -> int:
    """Write a complete store at store_dir (atomically); return its frame count."""
    from tqdm import tqdm

    spec = config.spec()
    dtype = np.dtype(config.dtype)
    partial = store_dir.with_name(f"{store_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    items = list(zip(manifest["utt_id"], manifest["wav_path"]))
    jobs = [(b, spec, dtype) for b in _batches(items, 16)]
    lengths, sums, squares = [], [], []
    digest = hashlib.sha256()
    progress = tqdm(total=len(items), desc="features", unit="utt", disable=None)
    pool = ProcessPoolExecutor(workers) if workers > 1 and len(items) > 32 else None
    try:
        results = pool.map(_extract_batch, jobs) if pool else map(_extract_batch, jobs)
        with open(partial / StoreFiles.FRAMES, "wb") as out:
            for batch in results:
                for frames, total, total_sq in batch:
                    data = frames.tobytes()
                    out.write(data)
                    digest.update(data)
                    lengths.append(len(frames))
                    sums.append(total)
                    squares.append(total_sq)
                progress.update(len(batch))
    finally:
        progress.close()
        if pool:
            pool.shutdown(cancel_futures=True)
    lengths = np.asarray(lengths, dtype=np.int64)
    index = pd.DataFrame({
        "utt_id": manifest["utt_id"].to_numpy(), "session": manifest["session"].to_numpy(),
        "speaker": manifest["speaker"].to_numpy(),
        "offset": np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64),
        "length": lengths})
    index.to_parquet(partial / StoreFiles.INDEX, index=False)
    normalization = _normalization(index, np.asarray(sums), np.asarray(squares))
    (partial / StoreFiles.NORMALIZATION).write_text(json.dumps(normalization))
    meta = {"key": key, "code_version": FEATURE_CODE_VERSION, "spec": spec.to_dict(),
            "dtype": dtype.name, "dim": spec.dim, "n_utterances": len(index),
            "n_frames": int(lengths.sum()), "frames_sha256": digest.hexdigest(),
            "index_sha256": file_sha256(partial / StoreFiles.INDEX),
            "normalization_sha256": file_sha256(partial / StoreFiles.NORMALIZATION)}
    (partial / StoreFiles.META).write_text(json.dumps(meta, indent=1))
    shutil.rmtree(store_dir, ignore_errors=True)
    partial.rename(store_dir)
    return meta["n_frames"]


def _normalization(index: pd.DataFrame, sums: np.ndarray, squares: np.ndarray) -> dict:
    """Statistics per fold (every session but the held-out one) and per speaker."""
    counts = index["length"].to_numpy(dtype=np.float64)

    def stats(mask: np.ndarray) -> dict:
        mean, std = Normalizer.from_moments(sums[mask].sum(0), squares[mask].sum(0),
                                            counts[mask].sum())
        return {"mean": mean.tolist(), "std": std.tolist(), "n_frames": int(counts[mask].sum())}

    sessions = sorted(int(s) for s in index["session"].unique())
    return {
        "all": stats(np.ones(len(index), bool)),
        "folds": {str(s): stats(index["session"].to_numpy() != s) for s in sessions
                  if (index["session"] != s).any()},
        "speakers": {str(k): stats(index["speaker"].to_numpy() == k)
                     for k in sorted(index["speaker"].unique())},
    }


def _link_store(store_dir: Path, out_dir: Path) -> None:
    """Make out_dir show the cached store: hard links, copies across file systems."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in StoreFiles.ALL:
        target = out_dir / name
        target.unlink(missing_ok=True)
        try:
            os.link(store_dir / name, target)
        except OSError:
            shutil.copy2(store_dir / name, target)


def run(manifest_path: Path, out_dir: Path, config: FeaturesConfig,
        cache_dir: Path | None = None) -> FeatureResult:
    """Build (or reuse) the store for every utterance of the validated manifest."""
    manifest = outputs.read_manifest(outputs.manifest_file(manifest_path))
    missing = manifest[manifest["wav_path"].isna()]
    if len(missing):
        raise FeatureInputError(f"{missing['utt_id'].iloc[0]} has no wav file "
                                f"(and {len(missing) - 1} more); run validate first")
    out_dir = Path(out_dir)
    cache = Path(cache_dir or config.cache_dir) if (cache_dir or config.cache_dir) else None
    key = cache_key(manifest, config)
    store_dir = cache / key[:24] if cache else out_dir
    problem = StoreFiles(store_dir).problem(key)
    if problem is None:
        reused, message = True, f"reused the feature store at {store_dir} (inputs unchanged)"
    else:
        workers = config.workers or len(os.sched_getaffinity(0))
        build(manifest, store_dir, config, key, workers)
        reused = False
        message = (f"built the feature store at {store_dir}"
                   + ("" if problem == "no finished store there" else
                      f" (the one there was {problem})"))
    if cache:
        _link_store(store_dir, out_dir)
    meta = outputs.read_json(store_dir / StoreFiles.META)
    return FeatureResult(store_dir, out_dir, reused, message, meta["n_utterances"],
                         meta["n_frames"])
