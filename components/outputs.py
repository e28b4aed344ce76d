"""The contract between the pipeline's steps: what each step leaves in its output folder, and
how the steps after it read that.

Every step writes one folder, its KFP output artifact: kfp.local puts it at
`<run>/<task>/<output>/`, the in-process runner at `<out>/<step>/`. The classes here name
the files in each folder and read them, so no step spells another's file names. Steps import
this module, the config and `model/`, never each other. (Reading a feature store's frames
is components/feature_store.py's.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from components.errors import UserError
from components.lineage import file_sha256
from model.spec import FEATURE_CODE_VERSION


def read_json(path: Path):
    return json.loads(Path(path).read_text())


# ---- ingest: the manifest ---------------------------------------------------------------

MANIFEST_SCHEMA = pa.schema([
    ("utt_id", pa.string()),
    ("session", pa.int64()),
    ("dialog", pa.string()),
    ("speaker", pa.string()),
    ("gender", pa.string()),
    ("scripted", pa.bool_()),
    ("start", pa.float64()),
    ("end", pa.float64()),
    ("label_raw", pa.string()),
    ("label", pa.string()),
    ("valence", pa.float64()),
    ("arousal", pa.float64()),
    ("dominance", pa.float64()),
    ("transcript", pa.string()),
    ("wav_path", pa.string()),
    ("duration_s", pa.float64()),
    ("sample_rate", pa.int64()),
    ("wdseg_path", pa.string()),
])
MANIFEST = "manifest.parquet"  # ingest writes every row under this name, validate the kept ones


def write_manifest(manifest: pd.DataFrame, path: Path) -> None:
    table = pa.Table.from_pandas(manifest, schema=MANIFEST_SCHEMA, preserve_index=False)
    pq.write_table(table, path)


def read_manifest(path: Path) -> pd.DataFrame:
    return pq.read_table(path).to_pandas()


def manifest_file(path: Path) -> Path:
    """Accept the manifest file or the folder a step wrote it to."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    if not path.is_file():
        raise UserError(f"manifest not found: {path}")
    return path


def labelled_rows(manifest_path: Path, classes: list[str], subset: str = "all"
                  ) -> pd.DataFrame:
    """The rows of the configured classes, indexed by utt_id: what training and evaluation
    read from the validated manifest. `subset` (ingest.subset): all, or the improvised or
    the scripted utterances alone."""
    manifest = read_manifest(manifest_file(manifest_path))
    labelled = manifest[manifest["label"].isin(classes)]
    if subset != "all":
        labelled = labelled[labelled["scripted"] == (subset == "scripted")]
    if labelled.empty:
        raise UserError("the manifest holds no utterance of the configured classes"
                        + ("" if subset == "all" else f" among its {subset} ones"))
    return labelled.set_index("utt_id", drop=False)


@dataclass(frozen=True)
class _Record:
    """A step output folder holding one JSON record (None until the step wrote it)."""

    folder: Path
    FILE = ""

    @property
    def path(self) -> Path:
        return self.folder / self.FILE

    def read(self) -> dict | None:
        return read_json(self.path) if self.path.is_file() else None


class _ManifestFolder(_Record):
    """A step output holding a manifest, and a JSON report on it as its record."""

    MANIFEST = MANIFEST

    @classmethod
    def at(cls, path: Path):
        """The folder, given it or the manifest file in it."""
        return cls(manifest_file(path).parent)

    @property
    def manifest_path(self) -> Path:
        return self.folder / self.MANIFEST

    @property
    def report_path(self) -> Path:
        return self.path

    def report(self) -> dict:
        return read_json(self.path)


class Ingested(_ManifestFolder):
    """ingest: one manifest row per label block, and what ingest noticed about the corpus."""

    KFP_OUTPUT = "manifest"
    REPORT = FILE = "ingest_report.json"


class Validated(_ManifestFolder):
    """validate: the kept rows, the quarantine with its reasons, and the reports."""

    KFP_OUTPUT = "validated"
    REPORT = FILE = "validation_report.json"
    QUARANTINE = "quarantine.csv"
    GX_RESULT = "gx_result.json"
    HTML = "report.html"
    STATS = "stats.json"
    # The drift reference a run passes to validate when it has no statistics to pass (the
    # registry's champion lookup, components/registry/drift.py): no champion yet, or
    # NO_CHECK + why a check that was asked for cannot be made. The report then says why
    # in `drift_unavailable`, and the gate does not promote the run's version.
    NO_CHAMPION = "no drift check: no champion yet"
    NO_CHECK = "no drift check: "


# ---- features: the store ----------------------------------------------------------------

@dataclass(frozen=True)
class StoreFiles:
    """features: every utterance's frames back to back, their index, normalisation
    statistics, and store.json (written last: without it the store is unfinished)."""

    folder: Path
    KFP_OUTPUT = "store"
    FRAMES = "frames.bin"
    INDEX = "index.parquet"
    NORMALIZATION = "normalization.json"
    META = "store.json"
    ALL = (FRAMES, INDEX, NORMALIZATION, META)
    CHECKSUMS = {FRAMES: "frames_sha256", INDEX: "index_sha256",
                                           NORMALIZATION: "normalization_sha256"}

    def problem(self, key: str | None = None) -> str | None:
        """None when the store is complete and intact (and has `key`); else why not."""
        meta_path = self.folder / self.META
        if not meta_path.is_file():
            return "no finished store there" if not self.folder.exists() else (
                "incomplete (no store.json: killed mid-write?)")
        try:
            meta = read_json(meta_path)
        except json.JSONDecodeError:
            return "store.json is damaged"
        if key is not None and meta.get("key") != key:
            return "stale (manifest, audio or settings changed)"
        if meta.get("code_version") != FEATURE_CODE_VERSION:
            return "made by another version of the feature code"
        frames = self.folder / self.FRAMES
        expected_bytes = meta["n_frames"] * meta["dim"] * np.dtype(meta["dtype"]).itemsize
        if not frames.is_file() or frames.stat().st_size != expected_bytes:
            return "frames.bin is missing or has the wrong size"
        for name, field in self.CHECKSUMS.items():
            path = self.folder / name
            if not path.is_file() or file_sha256(path) != meta[field]:
                return f"checksum mismatch in {name}"
        return None


# ---- train: one model per (fold, seed) ----------------------------------------------------------

@dataclass(frozen=True)
class TrainedModel:
    """train: `<member>/` per (fold, seed) model, named <fold>-seed<seed> (model.pt, the
    last epoch's checkpoint, history.json, fold.json with its split) and
    train_summary.json."""

    folder: Path
    KFP_OUTPUT = "model"
    MODEL = "model.pt"
    CHECKPOINT = "checkpoint.pt"
    HISTORY = "history.json"
    FOLD = "fold.json"
    SUMMARY = "train_summary.json"

    def member_dirs(self) -> list[Path]:
        folds = sorted(p.parent for p in self.folder.glob(f"*/{self.MODEL}"))
        if not folds:
            raise UserError(f"no trained model under {self.folder} (expected <fold>/model.pt)")
        return folds

    def bundles(self) -> dict[str, Path]:
        """Fold name -> its model bundle."""
        return {d.name: d / self.MODEL for d in self.member_dirs()}

    def summary(self) -> dict:
        return read_json(self.folder / self.SUMMARY)

    def history(self, member_dir: Path) -> list[dict]:
        return read_json(member_dir / self.HISTORY)

    def fold(self, member_dir: Path) -> dict:
        return read_json(member_dir / self.FOLD)

    def fold_files(self) -> list[Path]:
        """What training reports beside the weights: the summary, and each fold's history
        and split."""
        files = [self.folder / self.SUMMARY,
                 *sorted(self.folder.glob(f"*/{self.HISTORY}")),
                 *sorted(self.folder.glob(f"*/{self.FOLD}"))]
        return [p for p in files if p.is_file()]


# ---- evaluate, track, register ----------------------------------------------------------

@dataclass(frozen=True)
class Evaluation:
    """evaluate: metrics, per-utterance predictions, plots and a report."""

    folder: Path
    KFP_OUTPUT = "evaluation"
    METRICS = "metrics.json"
    PREDICTIONS = "predictions.csv"
    CONFUSION_PNG = "confusion.png"
    CURVES_PNG = "learning_curves.png"
    ATTENTION_PNG = "attention.png"
    REPORT_MD = "report.md"

    def metrics(self) -> dict:
        return read_json(self.folder / self.METRICS)

    def predictions(self) -> pd.DataFrame:
        return pd.read_csv(self.folder / self.PREDICTIONS)


class Tracked(_Record):
    """track: the MLflow run the pipeline run was logged to."""

    KFP_OUTPUT = "run"
    FILE = "mlflow_run.json"


class Registered(_Record):
    """register: the new model version and the gate's decision on it."""

    KFP_OUTPUT = "registration"
    FILE = "registration.json"


# ---- one run's outputs ------------------------------------------------------------------

# Where a finished run's readers find each output: the StepOutputs field, the task that
# wrote it (the DAG's tasks are named after their steps) and its folder's class. The
# (fold, seed) tasks' own models and evaluations are gathered by `summarize`.
STEP_OUTPUTS = {"manifest_dir": ("ingest", Ingested), "validated_dir": ("validate", Validated),
                "model_dir": ("summarize", TrainedModel),
                "evaluation_dir": ("summarize", Evaluation),
                "store_dir": ("features", StoreFiles), "run_dir": ("track", Tracked),
                "registration_dir": ("register", Registered)}
# The in-process runner's folder for each (its per-task folders: tasks/<member>/).
STEPS_DIR_NAMES = {"manifest_dir": "ingest", "validated_dir": "validate",
                   "model_dir": "train", "evaluation_dir": "evaluate",
                   "store_dir": "features", "run_dir": "track",
                   "registration_dir": "register"}


class _Reader:
    """A step's output folder, as its class above, from the StepOutputs field holding it."""

    def __init__(self, field: str, reader: type):
        self.field, self.reader = field, reader

    def __get__(self, outputs, owner=None):
        return self if outputs is None else self.reader(getattr(outputs, self.field))


@dataclass(frozen=True)
class StepOutputs:
    """Where the steps of one run left their outputs."""

    manifest_dir: Path     # ingest
    validated_dir: Path    # validate
    model_dir: Path        # train
    evaluation_dir: Path   # evaluate
    store_dir: Path | None = None
    run_dir: Path | None = None           # track
    registration_dir: Path | None = None  # register

    @classmethod
    def of_pipeline_run(cls, run_dir: Path) -> "StepOutputs":
        """kfp.local's layout: <run>/<task>/<output name>/."""
        return cls(**{field: Path(run_dir) / task / reader.KFP_OUTPUT
                      for field, (task, reader) in STEP_OUTPUTS.items()})

    @classmethod
    def of_steps_dir(cls, out_dir: Path) -> "StepOutputs":
        """The in-process runner's layout: <out>/<step>/."""
        return cls(**{field: Path(out_dir) / name for field, name in STEPS_DIR_NAMES.items()})

    ingested = _Reader("manifest_dir", Ingested)
    validated = _Reader("validated_dir", Validated)
    trained = _Reader("model_dir", TrainedModel)
    evaluation = _Reader("evaluation_dir", Evaluation)
    tracked = _Reader("run_dir", Tracked)
    registered = _Reader("registration_dir", Registered)
