"""One typed configuration for the whole pipeline, loaded from YAML, overridable with
`--set key=value`, and saved resolved beside every run.

The dataclasses below are the one place a key is declared: its type, its default and its
help (`setting`). configs/default.yaml is generated from them (`make config`; a test keeps
the two equal), and pydantic checks every value against the types, in strict mode, so
`epochs: "30"` or `seed: true` are mistakes, as they always were here. What the types cannot
say (ranges, keys that must agree) each section's `check` says."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
import textwrap
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from components import PROJECT_ROOT
from components.errors import ConfigError
from model.spec import (ATTENTIONS, CELLS, FEATURE_KINDS, KINDS, UNKNOWN_WORD_INITS,
                        WORD_POOLINGS, Architecture, FeatureSpec, setting)

DEFAULTS_FILE = PROJECT_ROOT / "configs" / "default.yaml"

# IEMOCAP codes behind each class name a configuration may ask for.
CLASS_CODES = {
    "neutral": "neu", "happy": "hap", "excited": "exc", "sad": "sad", "angry": "ang",
    "frustrated": "fru", "surprised": "sur", "fearful": "fea", "disgusted": "dis",
    "other": "oth",
}


class Section:
    """A section of the config: a key it does not declare is a mistake, not ignored."""

    __pydantic_config__ = {"extra": "forbid"}


def section(cls: type, help: str = ""):
    return field(default_factory=cls, metadata={"help": help})


@dataclass
class SampleCorpusConfig(Section):
    """The generated corpus `emoalign run` uses when `data/` is empty."""

    utterances: int = setting(600)
    seed: int = setting(0)

    def check(self) -> None:
        if self.utterances < 11:
            raise ConfigError("sample_corpus.utterances: at least 11 (one per IEMOCAP code)")


@dataclass
class IngestConfig(Section):
    classes: list[str] = setting(["neutral", "happy", "angry", "sad"],
                                 "also: excited, frustrated, surprised, fearful, disgusted, "
                                 "other")
    merge_excited: bool = setting(True, "the standard 4-class protocol counts exc as happy; "
                                        "false drops it (or keeps it, when 'excited' is a "
                                        "class)")

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
class DriftConfig(Section):
    """Thresholds on how far a corpus may move from the reference statistics."""

    class_share_warn: float = setting(0.10, "total variation distance of class shares")
    class_share_fail: float = setting(0.25)
    duration_warn: float = setting(0.15, "Kolmogorov-Smirnov distance of durations")
    duration_fail: float = setting(0.40)
    speaker_warn: float = setting(0.15, "total variation distance of utterances per speaker")
    speaker_fail: float = setting(0.40)
    oov_warn: float = setting(0.05, "share of tokens outside the reference vocabulary")
    oov_fail: float = setting(0.20)

    def check(self) -> None:
        for key, warn in vars(self).items():
            if key.endswith("_warn") and warn > getattr(self, key[:-5] + "_fail"):
                raise ConfigError(f"validate.drift.{key} is above its _fail threshold")


@dataclass
class ValidateConfig(Section):
    sample_rate: int = setting(16_000)
    channels: int = setting(1)
    min_duration_s: float = setting(0.2)
    # The real release's longest turn lasts about 34 s.
    max_duration_s: float = setting(40.0)
    duration_tolerance_s: float = setting(0.1, "wav length against its label block; more "
                                               "quarantines the wav")
    silence_floor_dbfs: float = setting(-55.0)
    max_clipped_share: float = setting(0.01)
    min_class_share: float = setting(0.03, "of the labelled rows, per class")
    max_quarantined_share: float = setting(0.20, "more than this is a broken corpus, not a "
                                                 "few bad files")
    strict: bool = setting(False, "every warning becomes an error")
    drift_reference: str = setting("champion", "what the corpus is compared with for drift: "
                                               "champion (the statistics of the data the "
                                               "current champion was trained on; none before "
                                               "the first) | none | a stats.json path")
    workers: int = setting(0, "audio check processes; 0 = one per core")
    drift: DriftConfig = section(DriftConfig, "warn / fail above these distances from the "
                                              "reference")

    def check(self, n_classes: int) -> None:
        for key in ("duration_tolerance_s", "min_duration_s", "max_clipped_share",
                    "min_class_share", "max_quarantined_share", "workers"):
            if getattr(self, key) < 0:
                raise ConfigError(f"validate.{key} must not be negative")
        if self.min_duration_s >= self.max_duration_s:
            raise ConfigError("validate.min_duration_s must be below validate.max_duration_s")
        if self.min_class_share * n_classes > 1:
            raise ConfigError("validate.min_class_share is more than the classes can all have")
        if not self.drift_reference.strip():
            raise ConfigError("validate.drift_reference must be champion, none or a "
                              "stats.json path")
        self.drift.check()


@dataclass
class FeaturesConfig(FeatureSpec, Section):
    """The speech feature settings (model/spec.py's FeatureSpec, whose fields come first
    here) and how the feature store keeps the frames."""

    # Pitch and energy, each speaker normalised with their own statistics, were chosen on
    # the generated and the espeak-ng corpus at three seeds (benchmarks/RESULTS.md,
    # "Choosing the speech features").
    pitch: bool = setting(True, "+ voicing and log-F0 per frame (YIN), with their deltas")
    energy: bool = setting(True, "+ log energy per frame, with its deltas")
    dtype: str = setting("float16", "or float32")
    normalization: str = setting("speaker", "speaker (each speaker's own statistics; serving "
                                            "enrols a new speaker from its own utterances) | "
                                            "global | none")
    content_hash: bool = setting(False, "cache key from wav size + mtime; true hashes the "
                                        "bytes")
    workers: int = setting(0, "extraction processes; 0 = one per core")
    cache_dir: str = setting("", "stores kept across runs; `emoalign run` uses "
                                 "runs/feature_cache")

    def check(self) -> None:
        if self.kind not in FEATURE_KINDS:
            raise ConfigError(f"features.kind must be {' or '.join(FEATURE_KINDS)}, got "
                              f"{self.kind!r}")
        if not 0 <= self.pre_emphasis < 1:
            raise ConfigError(f"features.pre_emphasis must be in [0, 1), got "
                              f"{self.pre_emphasis}")
        if self.max_seconds < 0:
            raise ConfigError(f"features.max_seconds must be 0 (whole utterances) or more, "
                              f"got {self.max_seconds}")
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
class ModelConfig(Architecture, Section):
    """The network (model/spec.py's Architecture, whose fields come first here) and what
    its inputs are built from."""

    word_vectors: str = setting("", "a local GloVe-format file (never downloaded); \"\" = "
                                    "embeddings learnt from scratch")
    unknown_word_init: str = setting("normal", "word_vectors: the vectors of words the file "
                                               "lacks: normal (sd 0.1) | uniform (in [-1, 1], "
                                               "the authors' code)")
    min_word_count: int = setting(1)
    # The tokenizer is kept with the trained model, so serving tokenizes as training did.
    punctuation_tokens: bool = setting(False, "tokens are [\\w']+ words and the marks . , ! "
                                              "? ; (the authors' code); false: words only")
    max_words: int = setting(0, "the first this many tokens of a transcript; 0: all")

    def check(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"model.kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for key, allowed in (("attention", ATTENTIONS), ("cell", CELLS),
                             ("word_pooling", WORD_POOLINGS),
                             ("unknown_word_init", UNKNOWN_WORD_INITS)):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"model.{key} must be {', '.join(allowed[:-1])} or "
                                  f"{allowed[-1]}, got {getattr(self, key)!r}")
        for key in ("embed_dim", "hidden", "attention_dim", "frame_pool", "min_word_count",
                    "attention_heads"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.{key} must be at least 1")
        if self.attention == "multihead" and (2 * self.hidden) % self.attention_heads:
            raise ConfigError(f"model.attention_heads ({self.attention_heads}) must divide "
                              f"2 * model.hidden ({2 * self.hidden}) under multihead "
                              "attention")
        for key in ("frame_projection", "max_words"):
            if getattr(self, key) < 0:
                raise ConfigError(f"model.{key} must be 0 or more")
        if not 0 <= self.dropout < 1:
            raise ConfigError("model.dropout must be in [0, 1)")
        if not 0 <= self.alignment_prior <= 1:
            raise ConfigError("model.alignment_prior must be in [0, 1]")


@dataclass
class TrainConfig(Section):
    epochs: int = setting(30)
    batch_size: int = setting(32)
    lr: float = setting(3e-3)
    lr_schedule: str = setting("cosine", "cosine (down to lr/10 at the last epoch) | "
                                         "constant")
    patience: int = setting(8, "selection best: epochs without a better validation UA "
                               "before stopping")
    min_epochs: int = setting(12, "no epoch is picked, and training never stops, before "
                                  "this")
    # "average" is the default because no small validation set can sway it (a mean of
    # weights, every epoch run; validation, if any, is only watched).
    selection: str = setting("average", "average: the mean of the last average_epochs "
                                        "epochs' weights | best: the epoch with the best "
                                        "validation UA (early stopping)")
    average_epochs: int = setting(10)
    # 0 is the default: on both benchmark corpora every kind scored higher, and retrains
    # varied less, than with one speaker held out for early stopping (benchmarks/RESULTS.md).
    validation_speakers: int = setting(0, "speakers of the training sessions held out for "
                                          "validation, one per session; 0: train on all "
                                          "(needs selection average)")
    grad_clip: float = setting(1.0)
    class_weights: bool = setting(False, "weight the loss by inverse class frequency")
    modality_dropout: float = setting(0.3, "align only: share of training utterances shown "
                                           "without speech or without words")
    unimodal_loss: float = setting(1.0, "align only: weight of the speech-only and text-only "
                                        "head losses (0: the fusion loss alone, as in the "
                                        "paper)")
    guided_attention: float = setting(0.0, "align only: weight of the loss on attention off "
                                           "the diagonal (0: free attention, as in the paper)")
    guided_attention_width: float = setting(0.2, "how far off the diagonal is off, as a "
                                                 "share of the utterance")
    guided_attention_fade: float = setting(0.5, "share of the epochs over which that weight "
                                                "fades to 0 (0: never)")
    time_masks: int = setting(0, "training only: spans of frames set to the speaker mean "
                                 "(0: off)")
    time_mask_share: float = setting(0.1, "the longest such span, as a share of the "
                                          "utterance")
    feature_masks: int = setting(0, "training only: bands of adjacent feature channels "
                                    "masked (0: off)")
    feature_mask_width: int = setting(4, "the widest such band, in channels")
    bucketing: bool = setting(True, "batch utterances of similar length together")
    device: str = setting("auto", "auto | cpu | cuda")
    bf16: bool = setting(True, "autocast on CUDA")
    deterministic: bool = setting(True, "CUDA: deterministic algorithms (same GPU, same "
                                        "weights)")
    threads: int = setting(0, "CPU threads per task; 0: the cores, shared among the tasks "
                              "running at once")
    seeds: list[int] | None = setting(None, "e.g. [0, 1, 2]: each fold trained once per "
                                            "seed, as its own task; null: [seed]")
    parallelism: int | None = setting(None, "(fold, seed) tasks at once; null: one per core "
                                            "locally, no limit on a cluster (fixed when the "
                                            "pipeline is compiled)")

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
        self._check_fan_out()
        self._check_regularisers()
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

    def _check_fan_out(self) -> None:
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

    def _check_regularisers(self) -> None:
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


@dataclass
class RegistryConfig(Section):
    """MLflow names and the promotion gate (components/registry/). The tracking store is
    not configured here: MLFLOW_TRACKING_URI, else SQLite under runs/."""

    model_name: str = setting("emoalign")
    experiment: str = setting("emoalign")
    ua_floor: float = setting(0.40, "below it a model is tracked but never registered "
                                    "(4 classes: chance is 0.25)")
    tolerance: float = setting(0.01, "how much lower than the champion's UA, both re-scored "
                                     "on the same test utterances, may still be promoted")
    bootstrap_samples: int = setting(1000, "for the 95 % interval of the UA difference")
    infra_check_utterances: int = setting(8, "test utterances scored through MLflow before "
                                             "promotion")

    def check(self) -> None:
        if not self.model_name.strip() or not self.experiment.strip():
            raise ConfigError("registry.model_name and registry.experiment must not be empty")
        if not 0 <= self.ua_floor <= 1 or not 0 <= self.tolerance <= 1:
            raise ConfigError("registry.ua_floor and registry.tolerance must be in [0, 1]")
        if self.bootstrap_samples < 100 or self.infra_check_utterances < 1:
            raise ConfigError("registry.bootstrap_samples must be at least 100 and "
                              "registry.infra_check_utterances at least 1")


@dataclass
class NotifyConfig(Section):
    """Where the end of every pipeline run is reported (components/notify.py)."""

    webhook: str = setting("", "http(s) URL that gets one JSON POST when a run ends, "
                               "succeeded or failed (status, failed task and reason, "
                               "registered version, gate decision, UA, WA); empty: none")

    def check(self) -> None:
        from components import notify

        if self.webhook and not notify.is_http_url(self.webhook):
            raise ConfigError("notify.webhook must be an http(s) URL, got "
                              f"{notify.redacted(self.webhook)!r}")


@dataclass
class Config(Section):
    seed: int = setting(0)
    protocol: str = setting("holdout", "holdout: test on holdout_session; loso: "
                                       "leave-one-session-out, 5 folds")
    holdout_session: int = setting(5)
    sample_corpus: SampleCorpusConfig = section(SampleCorpusConfig, "what `emoalign run` "
                                                "generates when data/ is empty")
    ingest: IngestConfig = section(IngestConfig)
    validate: ValidateConfig = section(ValidateConfig)
    features: FeaturesConfig = section(FeaturesConfig)
    model: ModelConfig = section(ModelConfig)
    train: TrainConfig = section(TrainConfig)
    registry: RegistryConfig = section(RegistryConfig)
    notify: NotifyConfig = section(NotifyConfig, "alerts at the end of a pipeline run")

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
        self.notify.check()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def seeds(self) -> list[int]:
        """The training seeds: train.seeds, else the top-level seed."""
        return list(self.train.seeds) if self.train.seeds is not None else [self.seed]

    def for_task(self, seed: int) -> "Config":
        """The config one (fold, seed) task trains with: that seed, and none of the
        run-wide fan-out and alert settings, so a task's inputs (and KFP's cache key) do not change
        when other seeds are added or the parallelism is changed."""
        task = copy.deepcopy(self)
        task.seed = seed
        task.train.seeds, task.train.parallelism = None, None
        task.notify = NotifyConfig()  # the run's alerts are not the task's
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
        return tree_sha256(self.to_dict())


def tree_sha256(tree: dict) -> str:
    """The config hash of a config tree (Config.to_dict, or a resolved config file as read),
    whatever keys this version of the code knows: `emoalign audit` checks a model's logged
    config with it, so a key added since still leaves old models auditable."""
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()


# ---- reading ---------------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """YAML as users write it: PyYAML follows YAML 1.1, which reads `1e-3` (no dot) as
    text; here it is the number YAML 1.2 and every user mean."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
                              list("-+0123456789."))


def _read_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


def load_config(path: Path | str | None = None, overrides: list[str] | tuple = ()) -> Config:
    """The defaults, then the YAML file, then each `key=value` override; validated."""
    tree = Config().to_dict()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = _read_yaml(path.read_text())
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
            value = _read_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(tree, key.strip(), _as_list_if_listed(key.strip(), value))
    return _validated(tree)


def config_from_yaml(text: str, overrides: list[str] | tuple = ()) -> Config:
    """The inverse of Config.to_yaml, as pipeline steps receive it (with `key=value`
    overrides applied before it is validated, once)."""
    return apply_overrides(_read_yaml(text) or {}, overrides)


def _set_dotted(tree: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key {dotted!r}: {part!r} is not a section")
    node[parts[-1]] = value


def _as_list_if_listed(dotted: str, value):
    """`--set train.seeds=0,1,2` and `--set train.seeds=3` for a list key: the list."""
    item = _list_item_type(dotted)
    if item is None or isinstance(value, list) or value is None:
        return value
    if isinstance(value, str):
        parts = [v.strip() for v in value.split(",") if v.strip()]
        return parts if item is str else [_read_yaml(v) for v in parts]
    return [value]


def _list_item_type(dotted: str) -> type | None:
    """The item type of the list key `dotted` names; None when it names no list key."""
    cls: type = Config
    *sections, last = dotted.split(".")
    for name in [*sections, last]:
        hints = typing.get_type_hints(cls)
        if name not in hints:
            return None
        hint = hints[name]
        if name == last:
            hint = next((h for h in typing.get_args(hint) if h is not type(None)), hint) \
                if isinstance(hint, typing.types.UnionType) else hint
            return typing.get_args(hint)[0] if typing.get_origin(hint) is list else None
        if not dataclasses.is_dataclass(hint):
            return None
        cls = hint
    return None


_TYPE_ERRORS = {"int_type": "expects an integer", "bool_type": "expects true or false",
                "float_type": "expects a number", "string_type": "expects text",
                "list_type": "expects a list"}


def _validated(tree: dict) -> Config:
    """The tree as a Config, checked: types by pydantic (strict, JSON rules: no string is a
    number, no number a boolean), then each section's own rules."""
    from pydantic import TypeAdapter, ValidationError

    try:
        config = TypeAdapter(Config).validate_json(json.dumps(tree, default=str), strict=True)
    except ValidationError as e:
        raise _one_line(e.errors()[0]) from None
    config.check()
    return config


def _one_line(error: dict) -> ConfigError:
    path = [p for p in error["loc"] if isinstance(p, str)]  # list items: their key
    name = ".".join(path)
    if error["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
        prefix = "".join(p + "." for p in path[:-1])
        known = sorted(f.name for f in fields(_section_at(path[:-1])))
        return ConfigError(f"unknown config key {name!r} (known: "
                           f"{', '.join(prefix + k for k in known)})")
    if error["type"] in ("dataclass_type", "dataclass_exact_type"):
        return ConfigError(f"config key {name!r} is a section; set its keys as {name}.KEY")
    what = _TYPE_ERRORS.get(error["type"], error["msg"].lower())
    return ConfigError(f"config key {name!r} {what}, got {error['input']!r}")


def _section_at(path: list[str]) -> type:
    cls: type = Config
    for name in path:
        cls = typing.get_type_hints(cls)[name]
    return cls


# ---- configs/default.yaml ----------------------------------------------------------------

DEFAULTS_HEADER = """\
# emoalign's defaults: every config key, with what it does. `emoalign run --config FILE`
# layers FILE over these and `--set key=value` over both; each run saves the result as
# config.resolved.yaml. Generated from components/config.py by `make config`: edit there.
"""


def defaults_yaml() -> str:
    """configs/default.yaml: every key's default, with its help as a comment."""
    return DEFAULTS_HEADER + "".join(_yaml_lines(Config(), ""))


def _yaml_lines(section_value, indent: str):
    for f in fields(section_value):
        value, help_text = getattr(section_value, f.name), f.metadata.get("help", "")
        if dataclasses.is_dataclass(value):
            yield _with_comment(f"{indent}{f.name}:", help_text, indent)
            yield from _yaml_lines(value, indent + "  ")
        else:
            scalar = yaml.safe_dump(value, default_flow_style=True, width=1000)
            scalar = scalar.removesuffix("\n").removesuffix("\n...")
            yield _with_comment(f"{indent}{f.name}: {scalar}", help_text, indent)


def _with_comment(line: str, help_text: str, indent: str, column: int = 30,
                  width: int = 92) -> str:
    if not help_text:
        return line + "\n"
    beside = f"{line.ljust(column - 2)}  # {help_text}"
    if len(beside) <= width:
        return beside + "\n"
    above = textwrap.wrap(help_text, width - len(indent) - 2)
    return "".join(f"{indent}# {part}\n" for part in above) + line + "\n"


if __name__ == "__main__":
    print(defaults_yaml(), end="")
