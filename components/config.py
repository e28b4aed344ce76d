"""One typed configuration for the whole pipeline, loaded from YAML, overridable with
`--set key=value`, and saved resolved beside every run."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from components import PROJECT_ROOT
from components.errors import ConfigError
from model.spec import ATTENTIONS, KINDS, FeatureSpec


DEFAULTS_FILE = PROJECT_ROOT / "configs" / "default.yaml"

# IEMOCAP codes behind each class name a configuration may ask for.
CLASS_CODES = {
    "neutral": "neu", "happy": "hap", "excited": "exc", "sad": "sad", "angry": "ang",
    "frustrated": "fru", "surprised": "sur", "fearful": "fea", "disgusted": "dis",
    "other": "oth",
}


@dataclass
class SampleCorpusConfig:
    """The generated corpus `emoalign run` uses when `data/` is empty."""

    utterances: int = 600
    seed: int = 0

    def check(self) -> None:
        if self.utterances < 11:
            raise ConfigError("sample_corpus.utterances: at least 11 (one per IEMOCAP code)")


@dataclass
class IngestConfig:
    classes: list[str] = field(default_factory=lambda: ["neutral", "happy", "angry", "sad"])
    # The standard 4-class protocol counts excited as happy; false drops exc utterances
    # (or keeps them as their own class when "excited" is listed in classes).
    merge_excited: bool = True

    def label_map(self) -> dict[str, str]:
        """IEMOCAP code -> class name, for the codes this class set keeps."""
        mapping = {CLASS_CODES[c]: c for c in self.classes}
        if self.merge_excited:
            mapping["exc"] = "happy"
        return mapping

    def check(self) -> None:
        unknown = [c for c in self.classes if c not in CLASS_CODES]
        if unknown:
            raise ConfigError(
                f"ingest.classes: unknown class {unknown[0]!r} (known: {', '.join(CLASS_CODES)})")
        if len(set(self.classes)) != len(self.classes):
            raise ConfigError("ingest.classes: a class is listed twice")
        if len(self.classes) < 2:
            raise ConfigError("ingest.classes: at least two classes are needed")
        if self.merge_excited and "happy" not in self.classes:
            raise ConfigError("ingest.merge_excited needs 'happy' in ingest.classes")
        if self.merge_excited and "excited" in self.classes:
            raise ConfigError("ingest.merge_excited contradicts 'excited' in ingest.classes")


@dataclass
class DriftConfig:
    """Thresholds on how far a corpus may move from the reference statistics."""

    # Total variation distance between class shares.
    class_share_warn: float = 0.10
    class_share_fail: float = 0.25
    # Kolmogorov-Smirnov distance between duration distributions.
    duration_warn: float = 0.15
    duration_fail: float = 0.40
    # Total variation distance between utterances-per-speaker shares.
    speaker_warn: float = 0.15
    speaker_fail: float = 0.40
    # Share of transcript tokens outside the reference vocabulary.
    oov_warn: float = 0.05
    oov_fail: float = 0.20

    def check(self) -> None:
        for key, warn in vars(self).items():
            if key.endswith("_warn") and warn > getattr(self, key[:-5] + "_fail"):
                raise ConfigError(f"validate.drift.{key} is above its _fail threshold")


@dataclass
class ValidateConfig:
    sample_rate: int = 16_000
    channels: int = 1
    min_duration_s: float = 0.2
    max_duration_s: float = 40.0  # the real release's longest turn lasts about 34 s
    # A wav whose length differs from its label block's by more than this is quarantined.
    duration_tolerance_s: float = 0.1
    silence_floor_dbfs: float = -55.0
    max_clipped_share: float = 0.01
    # Every class must hold at least this share of the labelled rows.
    min_class_share: float = 0.03
    # More quarantined labelled rows than this share means a broken corpus, not a few bad files.
    max_quarantined_share: float = 0.20
    strict: bool = False  # every warning becomes an error
    reference_stats: str = ""  # stats.json of a reference corpus, for the drift check
    workers: int = 0  # audio check processes; 0 = one per core
    drift: DriftConfig = field(default_factory=DriftConfig)

    def check(self, n_classes: int) -> None:
        for key in ("duration_tolerance_s", "min_duration_s", "max_clipped_share",
                    "min_class_share", "max_quarantined_share", "workers"):
            if getattr(self, key) < 0:
                raise ConfigError(f"validate.{key} must not be negative")
        if self.min_duration_s >= self.max_duration_s:
            raise ConfigError("validate.min_duration_s must be below validate.max_duration_s")
        if self.min_class_share * n_classes > 1:
            raise ConfigError("validate.min_class_share is more than the classes can all have")
        self.drift.check()


@dataclass
class FeaturesConfig(FeatureSpec):
    """The MFCC settings (model/spec.py's FeatureSpec, whose fields come first here) and how
    the feature store keeps the frames."""

    # The pipeline's defaults for prosody (FeatureSpec's stay off: they are what a model
    # bundle saved before these settings existed was trained with). Pitch and energy, each
    # speaker normalised with their own statistics, were chosen on the generated and the
    # espeak-ng corpus at three seeds (benchmarks/RESULTS.md, "Choosing the speech features").
    pitch: bool = True
    energy: bool = True
    dtype: str = "float16"
    # speaker: each speaker's own statistics (from their audio only; serving enrols a new
    # speaker from its own utterances); global: one mean/std from the training sessions; none.
    normalization: str = "speaker"
    # The cache key covers each wav's size and mtime; true hashes the bytes instead.
    content_hash: bool = False
    workers: int = 0  # extraction processes; 0 = one per core
    cache_dir: str = ""  # a shared folder of stores, reused across runs; "" = none

    def check(self) -> None:
        if self.dtype not in ("float16", "float32"):
            raise ConfigError(f"features.dtype must be float16 or float32, got {self.dtype!r}")
        if self.normalization not in ("global", "speaker", "none"):
            raise ConfigError("features.normalization must be global, speaker or none, "
                              f"got {self.normalization!r}")
        for key in ("n_mfcc", "n_mels", "stack", "subsample"):
            if getattr(self, key) < 1:
                raise ConfigError(f"features.{key} must be at least 1")
        if self.n_mfcc > self.n_mels:
            raise ConfigError("features.n_mfcc cannot exceed features.n_mels")
        if not 0 < self.hop_ms <= self.win_ms:
            raise ConfigError("features.hop_ms must be positive and at most features.win_ms")
        if self.workers < 0:
            raise ConfigError("features.workers must not be negative")
        if not 20 <= self.f0_min < self.f0_max <= 2000:
            raise ConfigError("features.f0_min and f0_max must satisfy 20 <= f0_min < f0_max "
                              f"<= 2000 (Hz), got {self.f0_min} and {self.f0_max}")


@dataclass
class ModelConfig:
    """The network (model/network.py)."""

    kind: str = "align"  # align | speech | text | late_fusion
    attention: str = "additive"  # additive (the paper) | dot (scaled dot product)
    embed_dim: int = 100
    hidden: int = 64
    attention_dim: int = 64
    frame_pool: int = 5
    dropout: float = 0.3
    word_vectors: str = ""  # a local GloVe-format file; "" = embeddings learnt from scratch
    min_word_count: int = 1

    def check(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"model.kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.attention not in ATTENTIONS:
            raise ConfigError(f"model.attention must be additive or dot, got "
                              f"{self.attention!r}")
        for key in ("embed_dim", "hidden", "attention_dim", "frame_pool", "min_word_count"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.{key} must be at least 1")
        if not 0 <= self.dropout < 1:
            raise ConfigError("model.dropout must be in [0, 1)")


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 32
    lr: float = 3e-3
    lr_schedule: str = "cosine"  # cosine (down to lr/10 at the last epoch) | constant
    patience: int = 8  # epochs without a better validation UA before stopping
    min_epochs: int = 12  # no model is picked, and training never stops, before this
    # Which weights a fold keeps: "average", the mean of the last `average_epochs` epochs'
    # weights (every epoch runs; validation, if any, is only watched), which no small
    # validation set can sway; or "best", those of the epoch with the best validation UA
    # (early stopping on `validation_speakers`).
    selection: str = "average"
    average_epochs: int = 10
    # Speakers of the training sessions held out for validation, one per session. 0 (the
    # default, with selection "average") trains on all of them: on both benchmark corpora
    # every kind scored higher, and retrains varied less, than with one speaker held out
    # for early stopping (benchmarks/RESULTS.md).
    validation_speakers: int = 0
    grad_clip: float = 1.0
    class_weights: bool = False  # weight the loss by inverse class frequency
    # Align model only: share of training utterances shown without speech or without words,
    # so that fusion learns to use both modalities.
    modality_dropout: float = 0.3
    # Align model only: weight of the speech-only and text-only losses on its encoders,
    # beside the fusion loss (0 = the fusion loss alone, as in the paper).
    unimodal_loss: float = 1.0
    # Align model only: weight of the loss on attention far from the word's place in the
    # utterance (0 = free attention, as in the paper), and how far is far, as a share.
    guided_attention: float = 0.0
    guided_attention_width: float = 0.2
    # Share of the epochs over which that weight fades to nothing (0 = full weight throughout).
    guided_attention_fade: float = 0.5
    # SpecAugment-style masking of the speech features in training, for every kind that hears
    # speech: `time_masks` spans of up to `time_mask_share` of each utterance's frames, and
    # `feature_masks` bands of up to `feature_mask_width` adjacent feature channels, set to
    # the speaker's mean (0 after normalisation). 0 masks: off.
    time_masks: int = 0
    time_mask_share: float = 0.1
    feature_masks: int = 0
    feature_mask_width: int = 4
    bucketing: bool = True
    device: str = "auto"  # auto | cpu | cuda
    bf16: bool = True  # bf16 autocast on CUDA
    # CUDA only: PyTorch's deterministic algorithms, so a re-run on the same GPU gives the
    # same weights (CPU kernels are deterministic already).
    deterministic: bool = True
    threads: int = 0  # CPU threads per task; 0 = the cores shared among the tasks running
    # Seeds each fold is trained with, one (fold, seed) task each; None = just `seed`.
    seeds: list[int] | None = None
    # How many (fold, seed) tasks run at once; None = one per core under kfp.local, no limit
    # on a cluster. Fixed when the pipeline is compiled.
    parallelism: int | None = None

    def check(self) -> None:
        if self.selection not in ("best", "average"):
            raise ConfigError(f"train.selection must be best or average, got {self.selection!r}")
        if self.validation_speakers < 0:
            raise ConfigError(f"train.validation_speakers must be 0 or more, got "
                              f"{self.validation_speakers}")
        if self.validation_speakers == 0 and self.selection != "average":
            raise ConfigError("train.selection=best picks an epoch on validation speakers but "
                              "train.validation_speakers is 0; set it to 1 or more, or use "
                              "train.selection=average")
        if self.average_epochs < 1:  # more than train.epochs: all of them
            raise ConfigError(f"train.average_epochs must be at least 1, got "
                              f"{self.average_epochs}")
        if self.seeds is not None:
            if not self.seeds:
                raise ConfigError("train.seeds is empty; give one seed or more (e.g. "
                                  "train.seeds=0,1,2), or null for the top-level seed")
            if min(self.seeds) < 0 or len(set(self.seeds)) != len(self.seeds):
                raise ConfigError(f"train.seeds must be distinct integers >= 0, got "
                                  f"{self.seeds}")
        if self.parallelism is not None and self.parallelism < 1:
            raise ConfigError(f"train.parallelism must be at least 1 (or null), got "
                              f"{self.parallelism}")
        if not 0 <= self.modality_dropout < 1:
            raise ConfigError("train.modality_dropout must be in [0, 1)")
        if not 0 <= self.unimodal_loss <= 10:
            raise ConfigError("train.unimodal_loss must be in [0, 10]")
        if not 0 <= self.guided_attention <= 100:
            raise ConfigError("train.guided_attention must be in [0, 100]")
        if not 0 < self.guided_attention_width <= 1:
            raise ConfigError("train.guided_attention_width must be in (0, 1]")
        if not 0 <= self.guided_attention_fade <= 1:
            raise ConfigError("train.guided_attention_fade must be in [0, 1]")
        if not (0 <= self.time_masks <= 10 and 0 <= self.feature_masks <= 10):
            raise ConfigError("train.time_masks and train.feature_masks must be in [0, 10]")
        if not (0 < self.time_mask_share <= 0.5 and self.feature_mask_width >= 1):
            raise ConfigError("train.time_mask_share must be in (0, 0.5] and "
                              "train.feature_mask_width at least 1")
        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be at least 1")
        if self.lr <= 0 or self.grad_clip < 0 or self.patience < 1 or self.threads < 0:
            raise ConfigError("train.lr must be positive, train.patience at least 1, "
                              "train.grad_clip and train.threads not negative")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ConfigError(f"train.lr_schedule must be cosine or constant, got "
                              f"{self.lr_schedule!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"train.device must be auto, cpu or cuda, got {self.device!r}")


@dataclass
class RegistryConfig:
    """MLflow names and the promotion gate (components/registry.py). The tracking store is
    not configured here: MLFLOW_TRACKING_URI, else SQLite under runs/."""

    model_name: str = "emoalign"
    experiment: str = "emoalign"
    # A model below this UA is never registered (4 classes: chance is 0.25).
    ua_floor: float = 0.40
    # The challenger replaces the champion unless its UA, both re-scored on the same test
    # utterances, is lower by more than this.
    tolerance: float = 0.01
    bootstrap_samples: int = 1000  # for the confidence interval of the UA difference
    # Test utterances the registered model must score through MLflow before promotion.
    infra_check_utterances: int = 8

    def check(self) -> None:
        if not self.model_name.strip() or not self.experiment.strip():
            raise ConfigError("registry.model_name and registry.experiment must not be empty")
        if not 0 <= self.ua_floor <= 1 or not 0 <= self.tolerance <= 1:
            raise ConfigError("registry.ua_floor and registry.tolerance must be in [0, 1]")
        if self.bootstrap_samples < 100 or self.infra_check_utterances < 1:
            raise ConfigError("registry.bootstrap_samples must be at least 100 and "
                              "registry.infra_check_utterances at least 1")


@dataclass
class Config:
    seed: int = 0
    # holdout: train on four sessions, test on `holdout_session`;
    # loso: leave-one-session-out 5-fold cross-validation.
    protocol: str = "holdout"
    holdout_session: int = 5
    sample_corpus: SampleCorpusConfig = field(default_factory=SampleCorpusConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)

    def check(self) -> None:
        """A ConfigError naming the first key that cannot be used."""
        self.ingest.check()
        self.validate.check(len(self.ingest.classes))
        self.features.check()
        if self.protocol not in ("holdout", "loso"):
            raise ConfigError(f"protocol must be holdout or loso, got {self.protocol!r}")
        if self.holdout_session not in (1, 2, 3, 4, 5):
            raise ConfigError(f"holdout_session must be 1..5, got {self.holdout_session}")
        self.model.check()
        self.train.check()
        self.registry.check()
        self.sample_corpus.check()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def seeds(self) -> list[int]:
        """The training seeds: train.seeds, else the top-level seed."""
        return list(self.train.seeds) if self.train.seeds is not None else [self.seed]

    def for_task(self, seed: int) -> "Config":
        """The config one (fold, seed) task trains with: that seed, and none of the
        run-wide fan-out settings, so a task's inputs (and KFP's cache key) do not change
        when other seeds are added or the parallelism is changed."""
        task = copy.deepcopy(self)
        task.seed = seed
        task.train.seeds, task.train.parallelism = None, None
        return task

    def for_data_steps(self) -> "Config":
        """The config ingest, validate and features run with: their sections, defaults
        elsewhere. On a cluster a task's parameters are its cache key, so a new seed or
        learning rate leaves the data steps (and, through their unchanged artifacts, every
        (fold, seed) task already trained) in KFP's cache."""
        return Config(ingest=copy.deepcopy(self.ingest), validate=copy.deepcopy(self.validate),
                      features=copy.deepcopy(self.features))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def _build(cls: type, values: dict, prefix: str):
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(f"unknown config key {name!r} (known: "
                              f"{', '.join(prefix + k for k in sorted(known))})")
        kwargs[key] = _coerce(hints[key], value, name)
    return cls(**kwargs)


def _coerce(hint, value, name: str):
    if isinstance(hint, types.UnionType):  # `X | None`: null, or an X
        if value is None:
            return None
        (hint,) = [h for h in typing.get_args(hint) if h is not type(None)]
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {name!r} is a section; set its keys as {name}.KEY")
        return _build(hint, value, name + ".")
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
            if item is not str:  # `--set train.seeds=0,1,2`: numbers, as YAML reads them
                value = [yaml.safe_load(v) for v in value]
        elif item is not str and not isinstance(value, (list, dict)) and value is not None:
            value = [value]  # `--set train.seeds=3`
        if not isinstance(value, list):
            raise ConfigError(f"config key {name!r} expects a list, got {value!r}")
        return [_coerce(item, v, name) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {name!r} expects true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key {name!r} expects an integer, got {value!r}")
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as text
            try:
                parsed = float(value)
                value = parsed if math.isfinite(parsed) else value
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"config key {name!r} expects a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key {name!r} expects text, got {value!r}")
    raise TypeError(f"unsupported config type {hint} for {name}")


def _set_dotted(tree: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key {dotted!r}: {part!r} is not a section")
    node[parts[-1]] = value


def load_config(path: Path | str | None = None, overrides: list[str] | tuple = ()) -> Config:
    """configs/default.yaml, then the YAML file, then each `key=value` override; validated."""
    tree = yaml.safe_load(DEFAULTS_FILE.read_text())
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}")
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys")
        _merge(tree, loaded or {})
    return apply_overrides(tree, overrides)


def _merge(tree: dict, layer: dict) -> None:
    """Layer `layer` over `tree` key by key; a value that is not a section replaces."""
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(tree.get(key), dict):
            _merge(tree[key], value)
        else:
            tree[key] = value


def apply_overrides(tree: dict, overrides: list[str] | tuple = ()) -> Config:
    """`key=value` items applied to a config tree, then built and validated."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(tree, key.strip(), value)
    config = _build(Config, tree, "")
    config.check()
    return config


def config_from_yaml(text: str) -> Config:
    """The inverse of Config.to_yaml, as pipeline steps receive it."""
    config = _build(Config, yaml.safe_load(text) or {}, "")
    config.check()
    return config
