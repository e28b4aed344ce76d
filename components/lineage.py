"""Where a run's inputs came from: the corpus hash (DVC's own algorithm) and the git commit."""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from pathlib import Path

import yaml


def corpus_hash(path: Path) -> str:
    """DVC's md5 of a folder (`<md5>.dir`): for `data/` it is exactly what data.dvc records."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db.local import LocalHashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    fs = LocalFileSystem()
    with tempfile.TemporaryDirectory() as scratch:
        _, _, obj = build(LocalHashFileDB(fs, scratch), str(Path(path).resolve()), fs, "md5",
                          dry_run=True)
    return obj.hash_info.value


def dvc_pointer_hash(dvc_file: Path) -> str | None:
    """The md5 a `.dvc` pointer file records for its single output."""
    if not dvc_file.is_file():
        return None
    outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or []
    return outs[0].get("md5") if outs else None


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


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()
