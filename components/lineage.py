"""Where a run's inputs came from: the corpus hash (DVC's own algorithm) and the code's commit.

An entry point (`emoalign run`, `submit`, `audit`) computes them once, as a `Lineage`; the
pipeline carries them as explicit parameters from there.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from components import PROJECT_ROOT

DEFAULT_DATA = PROJECT_ROOT / "data"  # the DVC-tracked corpus, as data.dvc records it
DVC_POINTER = PROJECT_ROOT / "data.dvc"


@dataclass(frozen=True)
class Lineage:
    corpus: str
    data_hash: str
    git_sha: str  # "" when unknown
    git_dirty: bool
    pipeline_run: str = ""


def _tree(path: Path):
    """DVC's tree object of a folder: each file's relative path and md5."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db.local import LocalHashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    fs = LocalFileSystem()
    with tempfile.TemporaryDirectory() as scratch:
        _, _, obj = build(LocalHashFileDB(fs, scratch), str(Path(path).resolve()), fs, "md5",
                          dry_run=True)
    return obj


def corpus_hash(path: Path) -> str:
    """DVC's md5 of a folder (`<md5>.dir`), as `dvc add` records it: for `data/` exactly
    what data.dvc holds. What a run is keyed on is `release_hash`."""
    return _tree(path).hash_info.value


def release_hash(corpus: Path) -> str:
    """The data hash of a corpus, the same whichever way it comes: its release root or the
    folder holding it, here (`emoalign run`) or in a cluster's fetch task. It is DVC's md5
    of a folder holding this release alone under its standard name, so the release in
    data/ (which holds it alone) hashes to the md5 data.dvc records, and a DVC revision's
    pinned md5 is this hash of the release it pins. Anything beside the release in the
    folder given, which no step reads, and the release folder's own name do not count."""
    from dvc_data.hashfile.tree import Tree

    from components import iemocap

    alone = Tree()
    for key, meta, oid in _tree(iemocap.find_release_root(Path(corpus))):
        alone.add((iemocap.RELEASE_DIRNAME, *key), meta, oid)
    alone.digest()
    return alone.hash_info.value


def dvc_pointer_hash(dvc_file: Path) -> str | None:
    """The md5 a `.dvc` pointer file records for its single output."""
    if not dvc_file.is_file():
        return None
    return pointer_md5(dvc_file.read_text())


def pointer_md5(text: str) -> str | None:
    """The md5 in the text of a `.dvc` pointer file."""
    outs = (yaml.safe_load(text) or {}).get("outs") or []
    return outs[0].get("md5") if outs else None


def data_hash(corpus: Path) -> tuple[str, str]:
    """(release_hash, where it came from) of the corpus a run reads; `data/` is checked
    against data.dvc too, as DVC hashes it (the whole folder)."""
    from components import iemocap

    corpus = Path(corpus).resolve()
    digest = release_hash(corpus)
    if corpus != DEFAULT_DATA.resolve():
        return digest, "hash of the corpus read"
    recorded = dvc_pointer_hash(DVC_POINTER)
    alone = [p.name for p in corpus.iterdir()] == [iemocap.RELEASE_DIRNAME]
    tracked = digest if alone else corpus_hash(corpus)
    if recorded and tracked != recorded:
        return digest, (f"data/ differs from data.dvc ({recorded}); "
                        "run `dvc add data` to record this version")
    return digest, "data/ matches data.dvc"


def git_sha(repo: Path) -> tuple[str | None, bool]:
    """(commit, dirty) of the checkout holding `repo`; (None, False) outside git."""
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain",
                                 "--untracked-files=no"],
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None, False
    return sha, bool(status.strip())


def code_version() -> tuple[str, bool]:
    """(commit, dirty) of the code running: an image carries it in EMOALIGN_GIT_SHA (baked in
    at build time, as it holds no .git); a checkout asks git. ("", False) when neither knows."""
    baked = os.environ.get("EMOALIGN_GIT_SHA", "")
    if baked:
        return baked, os.environ.get("EMOALIGN_GIT_DIRTY", "false") == "true"
    sha, dirty = git_sha(PROJECT_ROOT)
    return sha or "", dirty


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
