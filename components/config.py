"""One typed configuration for the whole pipeline, loaded from YAML, overridable with
`--set key=value`, and saved resolved beside every run.

The dataclasses below (and model/spec.py's, which they extend) are the one place a key is
declared: its type, its default and its help (`setting`). configs/default.yaml is generated
from them (`make config`; a test keeps the two equal).

A key's type is its rule. Pydantic checks every value against it, in strict mode
(`epochs: "30"` and `seed: true` are mistakes): a choice is a Literal (`cell: Literal["lstm",
"gru"]`), a range is annotated_types metadata (`Annotated[int, Ge(1)]`), and the few rules
on one key that neither can state are named predicates (`Predicate(distinct)`). Its first
complaint becomes one line naming the key and what it may hold (`_one_line`). The rules
that join keys come after: each section's ORDERED pairs (one key kept below another), then
its `check`.

A removed key (REMOVED) set to what it always meant is dropped, so older configs and the
config.resolved.yaml of older runs still load; set to anything else, it is refused, saying
why it went."""

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
from typing import Annotated, ClassVar, Literal

import yaml
from annotated_types import Ge, Gt, Interval, MinLen, Predicate

from components import PROJECT_ROOT, iemocap
from components.errors import ConfigError
from model.recognizer import DEFAULT as DEFAULT_RECOGNIZER, RECOGNIZERS
from model.spec import SAMPLE_RATE, Architecture, FeatureSpec, UnknownWordInit, setting

DEFAULTS_FILE = PROJECT_ROOT / "configs" / "default.yaml"

# IEMOCAP codes behind each class name a configuration may ask for.
CLASS_CODES = {
    "neutral": "neu", "happy": "hap", "excited": "exc", "sad": "sad", "angry": "ang",
    "frustrated": "fru", "surprised": "sur", "fearful": "fea", "disgusted": "dis",
    "other": "oth",
}
ClassName = Literal[tuple(CLASS_CODES)]  # the names above, written once
RecognizerName = Literal[tuple(RECOGNIZERS)]
# Where the words a model reads come from: the corpus' transcripts, or what the speech
# recogniser (serving.recognizer) hears in the audio.
TranscriptSource = Literal["gold", "asr"]


# Rules on one key that no type or range states. The docstring is what the error says.
def distinct(values: list) -> bool:
    """must not list a value twice"""
    return len(set(values)) == len(values)


def not_blank(text: str) -> bool:
    """must not be empty"""
    return bool(text.strip())


class Section:
    """A section of the config: a key it does not declare is a mistake, not ignored.
    ORDERED lists (lower key, "<" or "<=", upper key): pairs of its keys that must keep
    that order."""

    __pydantic_config__ = {"extra": "forbid"}
    ORDERED: ClassVar[tuple] = ()


def section(cls: type, help: str = ""):
    return field(default_factory=cls, metadata={"help": help})


@dataclass
class SampleCorpusConfig(Section):
    """The generated corpus `emoalign run` uses when `data/` is empty. Neither key shapes
    the model: what they write is the data, which the data hash covers."""

    utterances: Annotated[int, Ge(len(iemocap.LABEL_CODES))] = setting(
        600, "utterances to write; at least one per IEMOCAP code (11)", shapes_model=False)
    seed: Annotated[int, Ge(0)] = setting(0, "draws its speakers, their voices, the labels "
                                             "and the sentences", shapes_model=False)


@dataclass
class IngestConfig(Section):
    classes: Annotated[list[ClassName], MinLen(2), Predicate(distinct)] = setting(
        ["neutral", "happy", "angry", "sad"], "two or more of neutral, happy, excited, sad, "
                                              "angry, frustrated, surprised, fearful, "
                                              "disgusted, other; utterances of other codes "
                                              "are left out", shapes_model=True)
    merge_excited: bool = setting(True, "the standard 4-class protocol counts exc as happy; "
                                        "false drops it (or keeps it, when 'excited' is a "
                                        "class)", shapes_model=True)
    # IEMOCAP's scripted dialogs repeat the same lines in every session, so text scores on
    # them are inflated under session folds; the field often reports improvised alone.
    subset: Literal["all", "improvised", "scripted"] = setting(
        "all", "all | improvised | scripted: the utterances trained and tested on, by how "
               "their dialog was made", shapes_model=True)

    def label_map(self) -> dict[str, str]:
        """IEMOCAP code -> class name, for the codes this class set keeps."""
        mapping = {CLASS_CODES[c]: c for c in self.classes}
        if self.merge_excited:
            mapping["exc"] = "happy"
        return mapping

    def check(self) -> None:
        if self.merge_excited and "happy" not in self.classes:
            raise ConfigError("ingest.merge_excited needs 'happy' in ingest.classes")
        if self.merge_excited and "excited" in self.classes:
            raise ConfigError("ingest.merge_excited contradicts 'excited' in ingest.classes")


DRIFT_METRICS = ("class_share", "duration", "speaker", "oov")


@dataclass
class DriftConfig(Section):
    """Thresholds on how far a corpus may move from the reference statistics. None shapes
    the model: they warn or fail a run, and a run that passes keeps the same utterances."""

    ORDERED: ClassVar[tuple] = tuple((f"{m}_warn", "<=", f"{m}_fail") for m in DRIFT_METRICS)
    class_share_warn: float = setting(0.10, "total variation distance of class shares",
                                      shapes_model=False)
    class_share_fail: float = setting(0.25, "above it validation fails (_warn: it warns)",
                                      shapes_model=False)
    duration_warn: float = setting(0.15, "Kolmogorov-Smirnov distance of durations",
                                   shapes_model=False)
    duration_fail: float = setting(0.40, "above it validation fails", shapes_model=False)
    speaker_warn: float = setting(0.15, "total variation distance of utterances per speaker",
                                  shapes_model=False)
    speaker_fail: float = setting(0.40, "above it validation fails", shapes_model=False)
    oov_warn: float = setting(0.05, "share of tokens outside the reference vocabulary",
                              shapes_model=False)
    oov_fail: float = setting(0.20, "above it validation fails", shapes_model=False)


@dataclass
class ValidateConfig(Section):
    ORDERED: ClassVar[tuple] = (("min_duration_s", "<", "max_duration_s"),)
    channels: int = setting(1, "channels a wav must have; others are quarantined",
                            shapes_model=True)
    min_duration_s: Annotated[float, Ge(0)] = setting(0.2, "shorter utterances are "
                                                           "quarantined", shapes_model=True)
    # The real release's longest turn lasts about 34 s.
    max_duration_s: float = setting(40.0, "longer utterances are quarantined",
                                    shapes_model=True)
    duration_tolerance_s: Annotated[float, Ge(0)] = setting(
        0.1, "wav length against its label block; more quarantines the wav",
        shapes_model=True)
    silence_floor_dbfs: float = setting(-55.0, "a wav whose RMS level is below this is "
                                               "silent and quarantined", shapes_model=True)
    max_clipped_share: Annotated[float, Ge(0)] = setting(
        0.01, "a wav with more of its samples at full scale is clipped and quarantined",
        shapes_model=True)
    # The keys above decide which utterances are kept, so they shape the model; those below
    # pass or fail the run (or say what drift is measured against): a run that passes keeps
    # the same utterances whatever they hold.
    min_class_share: Annotated[float, Ge(0)] = setting(
        0.03, "of the labelled rows, per class, before and after quarantine; less fails "
              "validation", shapes_model=False)
    max_quarantined_share: Annotated[float, Ge(0)] = setting(
        0.20, "more than this is a broken corpus, not a few bad files", shapes_model=False)
    strict: bool = setting(False, "every warning becomes an error", shapes_model=False)
    drift_reference: Annotated[str, Predicate(not_blank)] = setting(
        "champion", "what the corpus is compared with for drift: champion (the statistics of "
                    "the data the current champion was trained on; none before the first) | "
                    "none | a stats.json path", shapes_model=False)
    workers: Annotated[int, Ge(0)] = setting(0, "audio check processes; 0 = one per core",
                                             shapes_model=False)
    drift: DriftConfig = section(DriftConfig, "warn / fail above these distances from the "
                                              "reference")

    def check(self, n_classes: int) -> None:
        if self.min_class_share * n_classes > 1:
            raise ConfigError("validate.min_class_share is more than the classes can all have")


@dataclass
class FeaturesConfig(FeatureSpec, Section):
    """The speech feature settings (model/spec.py's FeatureSpec, whose fields come first
    here) and how the feature store keeps the frames."""

    ORDERED: ClassVar[tuple] = (("n_mfcc", "<=", "n_mels"), ("hop_ms", "<=", "win_ms"),
                                ("f0_min", "<", "f0_max"))
    dtype: Literal["float16", "float32"] = setting("float16", "float16 | float32: how the "
                                                              "store keeps the frames",
                                                              shapes_model=True)
    normalization: Literal["speaker", "global", "none"] = setting(
        "speaker", "speaker (each speaker's own statistics; serving enrols a new speaker "
                   "from its own utterances) | global | none", shapes_model=True)
    # How stores are found and made (their cache key, their processes), not the frames.
    content_hash: bool = setting(False, "cache key from wav size + mtime; true hashes the "
                                        "bytes", shapes_model=False)
    workers: Annotated[int, Ge(0)] = setting(0, "extraction processes; 0 = one per core",
                                             shapes_model=False)
    cache_dir: str = setting("", "stores kept across runs; `emoalign run` uses "
                                 "runs/feature_cache", shapes_model=False)


@dataclass
class ModelConfig(Architecture, Section):
    """The network (model/spec.py's Architecture, whose fields come first here) and what
    its inputs are built from."""

    # Its path is compared with the champion's, not the file's contents.
    word_vectors: str = setting("", "a local GloVe-format file (never downloaded); \"\" = "
                                    "embeddings learnt from scratch", shapes_model=True)
    unknown_word_init: UnknownWordInit = setting(
        "normal", "word_vectors: the vectors of words the file lacks: normal (sd 0.1) | "
                  "uniform (in [-1, 1], the authors' code)", shapes_model=True)
    min_word_count: Annotated[int, Ge(1)] = setting(
        1, "training-set occurrences a word needs to enter the vocabulary; rarer words are "
           "unknown", shapes_model=True)
    # The tokenizer is kept with the trained model, so serving tokenizes as training did.
    punctuation_tokens: bool = setting(False, "tokens are [\\w']+ words and the marks . , ! "
                                              "? ; (the authors' code); false: words only",
                                              shapes_model=True)
    max_words: Annotated[int, Ge(0)] = setting(0, "the first this many tokens of a "
                                                  "transcript; 0: all", shapes_model=True)

    def check(self) -> None:
        if self.attention == "multihead" and (2 * self.hidden) % self.attention_heads:
            raise ConfigError(f"model.attention_heads ({self.attention_heads}) must divide "
                              f"2 * model.hidden ({2 * self.hidden}) under multihead "
                              "attention")


@dataclass
class TrainConfig(Section):
    epochs: Annotated[int, Ge(1)] = setting(30, "passes over the training set",
                                            shapes_model=True)
    batch_size: Annotated[int, Ge(1)] = setting(32, "utterances per optimizer step",
                                                shapes_model=True)
    lr: Annotated[float, Gt(0)] = setting(3e-3, "Adam's learning rate", shapes_model=True)
    lr_schedule: Literal["cosine", "constant"] = setting(
        "cosine", "cosine (down to lr/10 at the last epoch) | constant", shapes_model=True)
    patience: Annotated[int, Ge(1)] = setting(8, "selection best: epochs without a better "
                                                 "validation UA before stopping",
                                                 shapes_model=True)
    min_epochs: int = setting(12, "no epoch is picked, and training never stops, before "
                                  "this", shapes_model=True)
    # "average" is the default because no small validation set can sway it (a mean of
    # weights, every epoch run; validation, if any, is only watched).
    selection: Literal["average", "best"] = setting(
        "average", "average: the mean of the last average_epochs epochs' weights | best: the "
                   "epoch with the best validation UA (early stopping)", shapes_model=True)
    average_epochs: Annotated[int, Ge(1)] = setting(10, "selection average: how many of the "
                                                        "last epochs; more than epochs: all",
                                                        shapes_model=True)
    # 0 is the default: on both benchmark corpora every kind scored higher, and retrains
    # varied less, than with one speaker held out for early stopping (benchmarks/RESULTS.md).
    validation_speakers: Annotated[int, Ge(0)] = setting(
        0, "speakers of the training sessions held out for validation, one per session; 0: "
           "train on all (needs selection average)", shapes_model=True)
    grad_clip: Annotated[float, Ge(0)] = setting(1.0, "largest global gradient norm; 0: no "
                                                      "clipping", shapes_model=True)
    class_weights: bool = setting(False, "weight the loss by inverse class frequency",
                                  shapes_model=True)
    # 0 since issue 33: chosen on the validation speakers of four corpora at three seeds
    # (benchmarks/RESULTS.md, "Modality dropout off"). Where one modality alone carries the
    # class, an utterance shown without it still has its label: a target that contradicts
    # what is left.
    modality_dropout: Annotated[float, Interval(ge=0, lt=1)] = setting(
        0.0, "align only: share of training utterances shown without speech or without "
             "words", shapes_model=True)
    unimodal_loss: Annotated[float, Interval(ge=0, le=10)] = setting(
        1.0, "align only: weight of the speech-only and text-only head losses (0: the "
             "fusion loss alone, as in the paper)", shapes_model=True)
    bucketing: bool = setting(True, "batch utterances of similar length together",
                              shapes_model=True)
    transcripts: TranscriptSource = setting(
        "gold", "gold (the corpus') | asr (recognised by serving.recognizer, as the paper's "
                "ASR setting trains): the words training reads", shapes_model=True)
    device: Literal["auto", "cpu", "cuda"] = setting("auto", "auto (cuda when there is a "
                                                             "GPU) | cpu | cuda",
                                                             shapes_model=True)
    bf16: bool = setting(True, "autocast on CUDA", shapes_model=True)
    deterministic: bool = setting(True, "CUDA: deterministic algorithms (same GPU, same "
                                        "weights)", shapes_model=True)
    # Thread and task counts say how fast a run goes, not what it trains (the same weights,
    # up to float rounding), so neither shapes the model.
    threads: Annotated[int, Ge(0)] = setting(0, "CPU threads per task; 0: the cores, shared "
                                                "among the tasks running at once",
                                                shapes_model=False)
    seeds: Annotated[list[Annotated[int, Ge(0)]], MinLen(1), Predicate(distinct)] | None = \
        setting(None, "e.g. [0, 1, 2]: each fold trained once per seed, as its own task; "
                      "null: [seed]", shapes_model=True)
    parallelism: Annotated[int, Ge(1)] | None = setting(
        None, "(fold, seed) tasks at once; null: one per core locally, no limit on a cluster "
              "(fixed when the pipeline is compiled)", shapes_model=False)

    def check(self) -> None:
        if self.validation_speakers == 0 and self.selection != "average":
            raise ConfigError("train.selection=best picks an epoch on validation speakers but "
                              "train.validation_speakers is 0; set it to 1 or more, or use "
                              "train.selection=average")


@dataclass
class EvaluateConfig(Section):
    transcripts: TranscriptSource = setting(
        "gold", "gold (the corpus') | asr (recognised by serving.recognizer; metrics.json "
                "gives its word error rate, asr_wer): the words the test utterances are "
                "scored with", shapes_model=False)


@dataclass
class ServingConfig(Section):
    recognizer: RecognizerName = setting(
        DEFAULT_RECOGNIZER, f"{' | '.join(RECOGNIZERS)}: the offline speech recogniser that "
                            "transcribes utterances given without words (predict, the served "
                            "model, transcripts asr)", shapes_model=False)


@dataclass
class RegistryConfig(Section):
    """MLflow names and the promotion gate (components/registry/). The tracking store is
    not configured here: MLFLOW_TRACKING_URI, else SQLite under runs/. No key shapes the
    model: they name where it is kept and how the gate judges it."""

    model_name: Annotated[str, Predicate(not_blank)] = setting(
        "emoalign", "the registered model versions are added to", shapes_model=False)
    experiment: Annotated[str, Predicate(not_blank)] = setting(
        "emoalign", "the MLflow experiment runs are tracked in", shapes_model=False)
    ua_floor: Annotated[float, Interval(ge=0, le=1)] = setting(
        0.40, "below it a model is tracked but never registered (4 classes: chance is 0.25)",
        shapes_model=False)
    tolerance: Annotated[float, Interval(ge=0, le=1)] = setting(
        0.01, "how much lower than the champion's UA, both re-scored on the same test "
              "utterances, may still be promoted", shapes_model=False)
    bootstrap_samples: Annotated[int, Ge(100)] = setting(1000, "for the 95 % interval of "
                                                               "the UA difference",
                                                               shapes_model=False)
    infra_check_utterances: Annotated[int, Ge(1)] = setting(
        8, "test utterances scored through MLflow before promotion", shapes_model=False)


@dataclass
class NotifyConfig(Section):
    """Where the end of every pipeline run is reported (components/notify.py)."""

    webhook: str = setting("", "http(s) URL that gets one JSON POST when a run ends, "
                               "succeeded or failed (status, failed task and reason, "
                               "registered version, gate decision, UA, WA); empty: none",
                               shapes_model=False)

    def check(self) -> None:
        """EMOALIGN_WEBHOOK_URL, when set, wins: the config then records only that the URL
        came from the environment (notify.FROM_ENVIRONMENT), never the URL."""
        from components import notify

        if url := notify.webhook_from_environment():
            self.webhook = notify.FROM_ENVIRONMENT
        elif self.webhook != notify.FROM_ENVIRONMENT:
            url = self.webhook
        if url and not notify.is_http_url(url):
            from_environment = self.webhook == notify.FROM_ENVIRONMENT
            raise ConfigError(
                f"{notify.WEBHOOK_ENV} must be an http(s) URL (its value is not shown: it may "
                "hold a token)" if from_environment else
                f"notify.webhook must be an http(s) URL, got {notify.redacted(url)!r}")


@dataclass
class Config(Section):
    seed: Annotated[int, Ge(0)] = setting(0, "seeds training (initial weights, batch order, "
                                             "dropout), the choice of validation speakers "
                                             "and the gate's bootstrap; train.seeds trains "
                                             "several", shapes_model=True)
    protocol: Literal["holdout", "loso"] = setting(
        "holdout", "holdout: test on holdout_session; loso: leave-one-session-out, 5 folds",
        shapes_model=True)
    holdout_session: Annotated[int, Interval(ge=min(iemocap.SESSIONS),
                                             le=max(iemocap.SESSIONS))] = setting(
        5, "protocol holdout: the session tested on; the others train", shapes_model=True)
    sample_corpus: SampleCorpusConfig = section(SampleCorpusConfig, "what `emoalign run` "
                                                "generates when data/ is empty")
    ingest: IngestConfig = section(IngestConfig, "which labelled utterances are kept, as "
                                                 "which class")
    validate: ValidateConfig = section(ValidateConfig, "the gate before features: what is "
                                                       "quarantined, what fails the run")
    features: FeaturesConfig = section(FeaturesConfig, "the speech features and their store")
    model: ModelConfig = section(ModelConfig, "the network and its text inputs")
    train: TrainConfig = section(TrainConfig, "the optimisation, which weights are kept, "
                                              "and how the (fold, seed) tasks run")
    evaluate: EvaluateConfig = section(EvaluateConfig, "how the test utterances are scored")
    serving: ServingConfig = section(ServingConfig, "what a registered model does with "
                                                    "requests")
    registry: RegistryConfig = section(RegistryConfig, "MLflow names and the promotion gate")
    notify: NotifyConfig = section(NotifyConfig, "alerts at the end of a pipeline run")

    def check(self) -> None:
        """A ConfigError naming the first rule between keys that does not hold (pydantic
        has checked each key on its own)."""
        _check_order(self, "")
        self.ingest.check()
        self.validate.check(len(self.ingest.classes))
        self.model.check()
        self._check_alignment_prior()
        self._check_heads()
        self.train.check()
        self.notify.check()

    def _check_heads(self) -> None:
        if self.model.predict_with_heads and not self.train.unimodal_loss:
            raise ConfigError("model.predict_with_heads averages the speech and text heads, "
                              "which train.unimodal_loss=0 leaves out: set it above 0, or "
                              "model.predict_with_heads=false")
        if self.model.residual_fusion and not self.train.unimodal_loss:
            raise ConfigError("model.residual_fusion adds the speech and text heads' logits, "
                              "which train.unimodal_loss=0 leaves out: set it above 0, or "
                              "model.residual_fusion=false")
        if self.model.residual_fusion and self.model.predict_with_heads:
            raise ConfigError("model.residual_fusion and model.predict_with_heads are two "
                              "ways of predicting with the heads: choose one")

    def _check_alignment_prior(self) -> None:
        """The diagonal prior places word i of W at i/W of the speech: the words and the
        frames must cover the same span, and every token must be a spoken word."""
        if not self.model.alignment_prior:
            if self.model.free_view:
                raise ConfigError("model.free_view adds a view of the speech without the "
                                  "diagonal prior to the view with it, and "
                                  "model.alignment_prior is 0: set a width, or "
                                  "model.free_view=false")
            return
        if self.model.free_view and self.model.attention == "multihead":
            raise ConfigError("model.free_view works with additive or dot attention, not "
                              "multihead: set model.attention, or model.free_view=false")
        cut = {k: v for k, v in (("model.max_words", self.model.max_words),
                                 ("features.max_seconds", self.features.max_seconds)) if v}
        if cut:
            raise ConfigError(f"model.alignment_prior={self.model.alignment_prior} needs words and "
                              "frames of the same span, which "
                              f"{' and '.join(f'{k}={v}' for k, v in cut.items())} cut apart: "
                              f"set {' and '.join(cut)} to 0, or model.alignment_prior=0")
        if self.model.punctuation_tokens:
            raise ConfigError(f"model.alignment_prior={self.model.alignment_prior} places tokens "
                              "along the speech, where punctuation takes no time: set "
                              "model.punctuation_tokens=false, or model.alignment_prior=0")

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


def key_marks(section_value=None, prefix: str = "") -> dict[str, bool | None]:
    """Every config key (`section.key`, as MLflow params name them) and whether its
    declaration says it shapes the trained model; None where it says neither (a test
    refuses that)."""
    section_value = Config() if section_value is None else section_value
    marks = {}
    for f in fields(section_value):
        value = getattr(section_value, f.name)
        if dataclasses.is_dataclass(value):
            marks.update(key_marks(value, f"{prefix}{f.name}."))
        else:
            marks[prefix + f.name] = f.metadata.get("shapes_model")
    return marks


def model_shaping_keys() -> list[str]:
    """The keys whose values are part of a model's identity: a scheduled retrain trains
    when one of them differs from the champion's (components/registry/registration.py)."""
    return [key for key, shapes in key_marks().items() if shapes]


def tree_sha256(tree: dict) -> str:
    """The config hash of a config tree (Config.to_dict, or a resolved config file as read),
    whatever keys this version of the code knows: `emoalign audit` checks a model's logged
    config with it, so a key added or removed since still leaves old models auditable."""
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
        return parts if _holds_text(item) else [_read_yaml(v) for v in parts]
    return [value]


def _holds_text(hint) -> bool:
    return hint is str or (typing.get_origin(hint) is Literal and
                           all(isinstance(a, str) for a in typing.get_args(hint)))


def _list_item_type(dotted: str) -> type | None:
    """The item type of the list key `dotted` names; None when it names no list key."""
    cls: type = Config
    *sections, last = dotted.split(".")
    for name in [*sections, last]:
        hints = typing.get_type_hints(cls)
        if name not in hints:
            return None
        hint = _without_none(hints[name])
        if name == last:
            return typing.get_args(hint)[0] if typing.get_origin(hint) is list else None
        if not dataclasses.is_dataclass(hint):
            return None
        cls = hint
    return None


def _without_none(hint):
    """`X | None` -> X (Optional keys); any other type as it is."""
    if typing.get_origin(hint) in (typing.Union, typing.types.UnionType):
        return next(h for h in typing.get_args(hint) if h is not type(None))
    return hint


# ---- checking --------------------------------------------------------------------------

_ANY = object()
_GUIDED = ("the guided-attention loss changed nothing measurable on top of "
           "model.alignment_prior (benchmarks/RESULTS.md)")
_MASKS = ("masking the speech features helped no model kind on either benchmark corpus "
          "(benchmarks/RESULTS.md, issue 13)")
# Keys that were removed: the value at which each did nothing (_ANY: whatever it held, as
# the share and width keys did nothing while their count or weight was 0), and why it went.
# A logged config.resolved.yaml carries every key of its day, and `emoalign audit` and
# `emoalign register` read those again: set so, the key is dropped and the config means
# what it always meant; set to anything else, it asked for a run this code cannot make.
REMOVED = {
    "validate.sample_rate": (SAMPLE_RATE, f"features are extracted at {SAMPLE_RATE} Hz "
                                          "only, and validation quarantines a wav at any "
                                          "other rate"),
    "train.guided_attention": (0, _GUIDED),
    "train.guided_attention_width": (_ANY, _GUIDED),
    "train.guided_attention_fade": (_ANY, _GUIDED),
    "train.time_masks": (0, _MASKS),
    "train.time_mask_share": (_ANY, _MASKS),
    "train.feature_masks": (0, _MASKS),
    "train.feature_mask_width": (_ANY, _MASKS),
}


def _drop_removed(tree: dict) -> None:
    """Take the REMOVED keys out of `tree` where they are set to do nothing; a ConfigError
    for the first one set to do something."""
    for dotted, (inert, why) in REMOVED.items():
        *path, key = dotted.split(".")
        node = tree
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or key not in node:
            continue
        value = node.pop(key)
        if inert is not _ANY and not (type(value) in (int, float) and value == inert):
            raise ConfigError(f"config key {dotted!r} was removed ({why}); leave it out "
                              f"(only {inert}, as older runs logged it, is still read), got "
                              f"{value!r}")


def _check_order(section_value, prefix: str) -> None:
    """Each section's ORDERED pairs, the sections within it included."""
    for low, relation, high in section_value.ORDERED:
        below, above = getattr(section_value, low), getattr(section_value, high)
        if not (below < above if relation == "<" else below <= above):
            bound = "below" if relation == "<" else "at most"
            raise ConfigError(f"config key '{prefix}{low}' must be {bound} {prefix}{high} "
                              f"({above}), got {below}")
    for f in fields(section_value):
        value = getattr(section_value, f.name)
        if dataclasses.is_dataclass(value):
            _check_order(value, f"{prefix}{f.name}.")


def _validated(tree: dict) -> Config:
    """The tree as a Config, checked: the removed keys first, then every key against its
    type by pydantic (strict, JSON rules: no string is a number, no number a boolean; each
    Literal, range and predicate), then the rules between keys (Config.check)."""
    from pydantic import TypeAdapter, ValidationError

    tree = copy.deepcopy(tree)
    _drop_removed(tree)
    try:
        config = TypeAdapter(Config).validate_json(json.dumps(tree, default=str), strict=True)
    except ValidationError as e:
        raise _one_line(e.errors()[0]) from None
    config.check()
    return config


_TYPE_ERRORS = {"int_type": "expects an integer", "bool_type": "expects true or false",
                "float_type": "expects a number", "string_type": "expects text",
                "list_type": "expects a list"}
_RANGE_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def _one_line(error: dict) -> ConfigError:
    """Pydantic's complaint as one line naming the key and what it may hold."""
    path = [p for p in error["loc"] if isinstance(p, str)]  # list items: their key
    name = ".".join(path)
    kind = error["type"]
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        prefix = "".join(p + "." for p in path[:-1])
        known = sorted(f.name for f in fields(_section_at(path[:-1])))
        return ConfigError(f"unknown config key {name!r} (known: "
                           f"{', '.join(prefix + k for k in known)})")
    if kind in ("dataclass_type", "dataclass_exact_type"):
        return ConfigError(f"config key {name!r} is a section; set its keys as {name}.KEY")
    if kind == "literal_error":
        what = "must be one of " + ", ".join(map(str, typing.get_args(_declared_at(
            error["loc"]))))
    elif kind in _RANGE_ERRORS:
        what = "must be " + _range_words(_declared_at(error["loc"]), error["ctx"])
    elif kind == "too_short":
        least = error["ctx"]["min_length"]
        what = f"must list at least {least} value{'s' if least > 1 else ''}"
    elif kind == "predicate_failed":
        what = next(m.func.__doc__ for m in _metadata(_declared_at(error["loc"]))
                    if isinstance(m, Predicate))
    else:
        what = _TYPE_ERRORS.get(kind, error["msg"].lower())
    return ConfigError(f"config key {name!r} {what}, got {error['input']!r}")


def _section_at(path: list[str]) -> type:
    cls: type = Config
    for name in path:
        cls = typing.get_type_hints(cls)[name]
    return cls


def _declared_at(loc: tuple):
    """The type declared where pydantic's error points (a list's item type for an index),
    with its Annotated metadata."""
    hint = Config
    for part in loc:
        hint = _without_none(hint)
        while typing.get_origin(hint) is Annotated:
            hint = typing.get_args(hint)[0]
        if isinstance(part, int):
            hint = typing.get_args(hint)[0]
        else:
            hint = typing.get_type_hints(hint, include_extras=True)[part]
    return _without_none(hint)


def _metadata(hint) -> tuple:
    """The constraints on an Annotated type (Ge(1), Interval(...), Predicate(...))."""
    return getattr(hint, "__metadata__", ())


_BOUND_WORDS = {"gt": "above", "ge": "at least", "lt": "below", "le": "at most"}


def _range_words(hint, ctx: dict) -> str:
    """'at least 1', 'below 1', 'in [0, 1)': the whole range the key's type allows, where
    pydantic names only the bound that was crossed (`ctx`)."""
    bounds = {bound: getattr(m, bound) for m in _metadata(hint) for bound in _BOUND_WORDS
              if getattr(m, bound, None) is not None} or ctx
    low = [(k, v) for k, v in bounds.items() if k in ("gt", "ge")]
    high = [(k, v) for k, v in bounds.items() if k in ("lt", "le")]
    if low and high:
        (lk, lv), (hk, hv) = low[0], high[0]
        return f"in {'[' if lk == 'ge' else '('}{lv:g}, {hv:g}{']' if hk == 'le' else ')'}"
    [(k, v)] = low or high
    return f"{_BOUND_WORDS[k]} {v:g}"


# ---- configs/default.yaml ----------------------------------------------------------------

DEFAULTS_HEADER = """\
# emoalign's defaults: every config key, with what it does. `emoalign run --config FILE`
# layers FILE over these and `--set key=value` over both; each run saves the result as
# config.resolved.yaml. Generated from components/config.py by `make config`: edit there.
"""


def defaults_yaml() -> str:
    """configs/default.yaml: every key's default, with its help as a comment, after a
    header naming the keys that do not shape the model."""
    return DEFAULTS_HEADER + _operational_keys_comment() + "".join(_yaml_lines(Config(), ""))


def _operational_keys_comment(width: int = 92) -> str:
    """The header's list of the keys that never make `emoalign retrain` train (a section
    none of whose keys shapes the model as `section.*`)."""
    marks = key_marks()
    named: list[str] = []
    for key, shapes in marks.items():
        if shapes:
            continue
        parts = key.split(".")
        # The outermost section whose keys all leave the model alone, if any.
        whole = next((".".join(parts[:i]) for i in range(1, len(parts))
                      if not any(marks[k] for k in marks
                                 if k.startswith(".".join(parts[:i]) + "."))), None)
        item = f"{whole}.*" if whole else key
        if item not in named:
            named.append(item)
    text = ("A scheduled `emoalign retrain` trains when the data, the model's code or a key "
            "that shapes the model changed since the champion; these keys do not: "
            + ", ".join(named) + ".")
    return "#\n" + "".join(f"# {line}\n" for line in textwrap.wrap(text, width - 2)) + "\n"


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
