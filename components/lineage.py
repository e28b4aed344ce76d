"""Where a run's inputs came from: the corpus hash (DVC's own algorithm) and the code's commit.

An entry point (`emoalign run`, `submit`, `audit`) computes them once, as a `Lineage`; the
pipeline carries them as explicit parameters from there.

Also the model's code identity (`code_identity`): a hash of each file on the path from data
to model (MODEL_CODE), read where the running code was imported from, so a checkout and an
image that installed the same files agree without git. A scheduled retrain compares it
with the champion's; the commit is lineage, recorded beside it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
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


# ---- the model's code identity ---------------------------------------------------------

# The modules on the path from data to model: ingest, validation, features, training, the
# model and its serving. A change to any of them can change what a run trains or how the
# registered model serves, so `emoalign retrain` trains again; a change anywhere else (the
# modules below, pipelines/, corpora/, docs, tests, benchmarks, infra/, the README) does not.
MODEL_CODE = {
    "components.iemocap": "reads the release: label blocks, codes, transcripts, wavs",
    "components.ingest": "the manifest: which utterances, as which class",
    "components.validate": "the audio checks that decide which utterances are kept",
    "components.outputs": "how steps write and read manifests, stores and models (the "
                          "labelled rows a model trains on among them)",
    "components.features": "the speech frames",
    "components.feature_store": "the frames as training reads them",
    "components.folds": "the (fold, seed) splits: which utterances train",
    "components.selection": "which epoch's weights are kept",
    "components.train": "training",
    "components.member": "one (fold, seed) member: its task config, its training",
    "components.transcripts": "recognised transcripts, which train.transcripts=asr trains on",
    # model/ is the network and all a registered version serves: it ships as its code.
    "model": "the package a registered version ships",
    "model.spec": "what a model and its features are built from",
    "model.network": "the network",
    "model.features": "speech frames and their normalisation, in training and serving",
    "model.text": "transcripts into tokens",
    "model.vocab": "the vocabulary and word vectors",
    "model.data": "examples into batches",
    "model.metrics": "UA, which picks the weights kept under selection best",
    "model.serving": "a wav and a transcript into probabilities",
    "model.recognizer": "the words of an utterance given without them, in training "
                        "(train.transcripts=asr) and serving",
    "model.pyfunc": "serving as MLflow logs and serves it",
}
# Modules of components/ that do not shape the model, and why (a test checks that each
# module of components/ and model/ is in one list or the other, so a new one is decided).
NOT_MODEL_CODE = {
    "components": "the package's table of contents and PROJECT_ROOT",
    "components.config": "the settings' declarations: their values are compared key by key "
                         "(the keys marked shapes_model), not their help or this code",
    "components.errors": "error classes",
    "components.lineage": "where inputs came from (this file)",
    "components.fetch": "where the corpus is read from: the data hash covers what it holds",
    "components.check": "whether to train at all",
    "components.evaluate": "scores a model; the model is the same whatever it reports",
    "components.reporting": "reports and plots; gathers the members' files unchanged",
    "components.environment": "threads, devices and what is recorded of them: where a model "
                              "was made, not what",
    "components.notify": "the end-of-run alert",
    "components.registry": "MLflow: tracking, registration, the gate, cards, predict "
                           "(every module of components/registry/)",
}


@dataclass(frozen=True)
class CodeIdentity:
    """The model code's identity: each MODEL_CODE file's sha256, by its path in the package
    (`model/network.py`), and one hash over them."""

    files: dict[str, str]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.files, sort_keys=True).encode()).hexdigest()

    def tags(self) -> dict[str, str]:
        """As a run and its registered version are tagged: `code_sha256`, and `code_files`,
        a JSON object of path -> the first 12 hex digits of the file's hash (enough to name
        the files that changed since)."""
        short = {path: digest[:12] for path, digest in sorted(self.files.items())}
        return {"code_sha256": self.sha256, "code_files": json.dumps(short, sort_keys=True)}


def code_identity() -> CodeIdentity:
    """The identity of the model code this process runs: the files MODEL_CODE names, read
    where Python imports them from (a checkout, or the package an image installed)."""
    files = {}
    for module in MODEL_CODE:
        spec = importlib.util.find_spec(module)
        origin = Path(spec.origin)
        files[module.replace(".", "/") + ("/__init__.py" if origin.name == "__init__.py"
                                          else ".py")] = file_sha256(origin)
    return CodeIdentity(files)


def changed_code(recorded_tags: dict[str, str], now: CodeIdentity) -> list[str] | None:
    """The model files that differ between a version's code tags and `now` (added and
    removed ones too); None when the version has no code identity (it predates it)."""
    if "code_sha256" not in recorded_tags:
        return None
    if recorded_tags["code_sha256"] == now.sha256:
        return []
    try:
        before = json.loads(recorded_tags.get("code_files", "{}"))
    except ValueError:
        before = {}
    short = {path: digest[:12] for path, digest in now.files.items()}
    changed = [path + ("" if path in before else " (new)") for path in sorted(short)
               if before.get(path) != short[path]]
    changed += [f"{path} (gone)" for path in sorted(set(before) - set(short))]
    return changed or ["files not named (the version's code_files tag does not say)"]
