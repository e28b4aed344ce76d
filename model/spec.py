"""What a model and its speech features are built from: plain settings, free of torch, so a
configuration loads (and a test or the CLI starts) without importing it.

A setting is declared once: its type (a choice as a Literal, a range as annotated_types
metadata, both checked by pydantic when a config loads), its default and what it does
(`setting`). The config (components/config.py) extends these classes, and
configs/default.yaml is generated from them."""

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Annotated, Any, ClassVar, Literal, get_args

from annotated_types import Ge, Gt, Interval, Le

# IEMOCAP's rate, and the only one features are extracted at: validation quarantines a wav
# at any other, and serving refuses one.
SAMPLE_RATE = 16_000

# A choice is its Literal type; the names below are read off it, for the code that goes
# through every choice (a model class per kind, a cell per name).
Kind = Literal["align", "speech", "text", "late_fusion"]
Cell = Literal["lstm", "gru"]
UnknownWordInit = Literal["normal", "uniform"]  # word vectors of words a vector file lacks
KINDS, CELLS, UNKNOWN_WORD_INITS = get_args(Kind), get_args(Cell), get_args(UnknownWordInit)
# Vocabulary ids every model shares: padding, and every word the vocabulary lacks.
PAD_ID, UNK_ID = 0, 1
FEATURE_CODE_VERSION = "1"  # bump when model/features.py changes what it returns


def setting(default: Any = MISSING, help: str = "", factory=MISSING, *,
            shapes_model: bool) -> Any:
    """A dataclass field that is a config key: its default, the line of help that
    configs/default.yaml shows beside it, and whether it shapes the trained model.

    `shapes_model` has no default, so every key says: True when another value can give
    other weights or another served model (a scheduled retrain trains when it changed since
    the champion), False when it only says how fast, where or with what checks a run goes
    (thread and worker counts, caches, alerts, the registry's gate)."""
    if isinstance(default, list):
        default, factory = MISSING, (lambda value=default: list(value))
    return field(default=default, default_factory=factory,
                 metadata={"help": help, "shapes_model": shapes_model})


def _saved(spec, always: tuple, absent_means: dict | None = None) -> dict:
    """A spec's settings as saved: the `always` ones in that order, then each setting added
    since only where it differs from what its absence means (its default, or the value in
    `absent_means` for a setting whose default is not how older models were built). A model
    or store that does not use a new setting is saved (and keyed) byte for byte as before it
    existed; loading gives a missing setting what its absence means."""
    absent_means = absent_means or {}
    values = asdict(spec)
    newer = {f.name: values[f.name] for f in fields(spec) if f.name not in always
             and values[f.name] != absent_means.get(f.name, f.default)}
    return {**{key: values[key] for key in always}, **newer}


@dataclass
class FeatureSpec:
    """Speech feature settings. The `features` section of the config is this spec plus how
    the store keeps the frames (components/config.py)."""

    sample_rate: ClassVar[int] = SAMPLE_RATE
    # The settings stores and bundles have always listed; those added since are listed only
    # when they differ from their defaults (_saved), so today's stores keep their cache key.
    SAVED_ALWAYS: ClassVar[tuple] = ("n_mfcc", "n_mels", "win_ms", "hop_ms", "deltas",
                                     "delta_deltas", "stack", "subsample", "pitch", "energy",
                                     "f0_min", "f0_max")
    # What a store or bundle saved before a setting existed was made with, where that
    # differs from the setting's default today: it lacks the key, so its absence means this.
    BEFORE_THE_SETTING: ClassVar[dict] = {"pitch": False, "energy": False}
    kind: Literal["mfcc", "spectrum"] = setting(
        "mfcc", "mfcc | spectrum (the magnitude |STFT|, n_fft/2 + 1 bins per frame: 257 at "
                "25 ms windows; no log, n_mfcc and n_mels unused)", shapes_model=True)
    n_mfcc: Annotated[int, Ge(1)] = setting(13, "cepstral coefficients per frame (at most "
                                                "n_mels)", shapes_model=True)
    n_mels: Annotated[int, Ge(1)] = setting(40, "mel bands they are computed from",
                                            shapes_model=True)
    win_ms: float = setting(25.0, "analysis window (ms)", shapes_model=True)
    hop_ms: Annotated[float, Gt(0)] = setting(10.0, "frame shift (ms), at most win_ms",
                                              shapes_model=True)
    deltas: bool = setting(True, "+ first differences of every value", shapes_model=True)
    delta_deltas: bool = setting(True, "+ second differences", shapes_model=True)
    stack: Annotated[int, Ge(1)] = setting(1, "consecutive frames concatenated into one",
                                           shapes_model=True)
    subsample: Annotated[int, Ge(1)] = setting(1, "keep every k-th frame (shorter sequences "
                                                  "for the encoder)", shapes_model=True)
    # Pitch and energy, each speaker normalised with their own statistics, were chosen on
    # the generated and the espeak-ng corpus at three seeds (benchmarks/RESULTS.md,
    # "Choosing the speech features").
    pitch: bool = setting(True, "+ voicing and log-F0 per frame (YIN), with their deltas",
                          shapes_model=True)
    energy: bool = setting(True, "+ log energy per frame, with its deltas",
                           shapes_model=True)
    f0_min: Annotated[float, Ge(20)] = setting(60.0, "F0 search range (Hz): its lower end, "
                                                     "20 or more", shapes_model=True)
    f0_max: Annotated[float, Le(2000)] = setting(500.0, "its upper end, above f0_min and "
                                                        "2000 at most", shapes_model=True)
    pre_emphasis: Annotated[float, Interval(ge=0, lt=1)] = setting(
        0.0, "x[t] - a x[t-1] on the waveform before the MFCC or spectrum (not pitch or "
             "energy); 0: none", shapes_model=True)
    max_seconds: Annotated[float, Ge(0)] = setting(
        0.0, "each utterance cut to its first this many seconds, in training and serving "
             "alike; 0: whole", shapes_model=True)

    @property
    def n_fft(self) -> int:
        """FFT size: the window's length in samples, up to a power of two (400 -> 512)."""
        win = int(round(self.sample_rate * self.win_ms / 1000))
        return 1 << (win - 1).bit_length()

    @property
    def base_dim(self) -> int:
        """Values per frame before deltas and stacking."""
        spectral = self.n_fft // 2 + 1 if self.kind == "spectrum" else self.n_mfcc
        return spectral + 2 * self.pitch + self.energy

    @property
    def dim(self) -> int:
        return self.base_dim * (1 + self.deltas + self.delta_deltas) * self.stack

    def step_seconds(self, pool: int = 1) -> float:
        """Seconds of speech one encoder step covers when `pool` frames are pooled into it."""
        return pool * self.subsample * self.hop_ms / 1000

    def spec(self) -> "FeatureSpec":
        """The extraction settings alone (a config section carries storage settings too)."""
        return FeatureSpec(**{f.name: getattr(self, f.name) for f in fields(FeatureSpec)})

    def to_dict(self) -> dict:
        return {"sample_rate": self.sample_rate,
                **_saved(self.spec(), self.SAVED_ALWAYS, self.BEFORE_THE_SETTING)}

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureSpec":
        """Inverse of to_dict; a store or bundle saved before a setting existed gets what
        its absence means."""
        if data.get("sample_rate", cls.sample_rate) != cls.sample_rate:
            raise ValueError(f"features at {data['sample_rate']} Hz; this code extracts at "
                             f"{cls.sample_rate} Hz")
        saved = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        return cls(**{**cls.BEFORE_THE_SETTING, **saved})


@dataclass
class Architecture:
    """The network's shape, as a user chooses it: the `model` section of the config extends
    it, and a trained model's ModelSpec adds what the data decide."""

    kind: Kind = setting("align", "align (speech + text, each word attending over the "
                                  "speech: the paper) | speech | text | late_fusion (a "
                                  "speech and a text model, their probabilities averaged)",
                                  shapes_model=True)
    attention: Literal["additive", "dot", "multihead"] = setting(
        "additive", "additive (the paper) | dot (scaled dot product) | multihead (scaled dot "
                    "product in attention_heads heads of 2 * hidden / heads values: the "
                    "authors' code)", shapes_model=True)
    embed_dim: Annotated[int, Ge(1)] = setting(32, "word embedding size (the word "
                                                      "vectors' size with word_vectors)",
                                               shapes_model=True)
    hidden: Annotated[int, Ge(1)] = setting(32, "recurrent units per direction",
                                            shapes_model=True)
    attention_dim: Annotated[int, Ge(1)] = setting(32, "attention's projection size "
                                                       "(additive and dot)",
                                                       shapes_model=True)
    frame_pool: Annotated[int, Ge(1)] = setting(10, "frames averaged before the speech "
                                                    "LSTM (100 ms steps)",
                                                    shapes_model=True)
    dropout: Annotated[float, Interval(ge=0, lt=1)] = setting(
        0.3, "share of values zeroed in training: on the word embeddings and before the "
             "output layer (and more with encoder_dropout)", shapes_model=True)
    alignment_prior: Annotated[float, Interval(ge=0, le=1)] = setting(
        0.05, "align only: width of the diagonal prior on the attention, as a share of the "
             "utterance (0: none)", shapes_model=True)
    free_view: bool = setting(
        False, "align with alignment_prior: each word also reads the speech through the same "
               "scores without the prior (attention anywhere), beside its aligned speech",
        shapes_model=True)
    predict_with_heads: bool = setting(
        False, "align with train.unimodal_loss: predict with the mean of the fusion head's and "
               "the speech and text heads' probabilities (a late fusion inside the model); "
               "false: the fusion head alone", shapes_model=True)
    residual_fusion: bool = setting(
        False, "align with train.unimodal_loss: the output is the sum of the fusion head's and "
               "the speech and text heads' logits, trained as one (each modality's own "
               "evidence reaches the prediction; the fusion head learns what they say "
               "together beyond it); false: the fusion head alone", shapes_model=True)
    # The prior's width and the summary were chosen together on the validation speakers of
    # four corpora at three seeds (benchmarks/RESULTS.md, "Alignment that keeps the whole
    # utterance").
    speech_summary: bool = setting(
        True, "align only: the whole utterance's speech (its states' max over time) joined "
              "to the fused words before the output layer", shapes_model=True)
    cell: Cell = setting("lstm", "lstm | gru: the cell of every recurrent layer",
                         shapes_model=True)
    attention_heads: Annotated[int, Ge(1)] = setting(8, "attention multihead: heads (must "
                                                        "divide 2 * hidden)",
                                                        shapes_model=True)
    word_pooling: Literal["max", "attention"] = setting(
        "max", "align: how the fusion states become one vector: max over words | attention "
               "(u = tanh(W h + b), weights softmax(u . c) over the words; the authors' "
               "code)", shapes_model=True)
    frame_projection: Annotated[int, Ge(0)] = setting(
        0, "units of the per-frame relu layer before the speech LSTM; 0: hidden",
        shapes_model=True)
    encoder_dropout: bool = setting(False, "dropout also after the frame projection, after "
                                           "each encoder and on the aligned speech (the "
                                           "authors' code); false: on the word embeddings "
                                           "and before the output layer only",
                                           shapes_model=True)


@dataclass
class ModelSpec(Architecture):
    """Everything build_model needs: the architecture, and what the data decide."""

    n_classes: int = 4
    feature_dim: int = 39
    vocab_size: int = 2
    # Align only: a speech-only and a text-only classifier on the encoders, trained beside
    # the fusion head and unused at prediction (model/network.py, AlignModel.outputs).
    unimodal_heads: bool = False

    # The order bundles have always listed the keys in, so a bundle's bytes do not depend
    # on how the fields are arranged above.
    SAVED_ORDER: ClassVar[tuple] = ("kind", "n_classes", "feature_dim", "vocab_size",
                                    "embed_dim", "hidden", "attention", "attention_dim",
                                    "frame_pool", "dropout", "unimodal_heads")

    # What a bundle saved before a setting existed was built with, where that differs from
    # the setting's default today: such a bundle lacks the key, so its absence means this.
    BEFORE_THE_SETTING: ClassVar[dict] = {"alignment_prior": 0.0, "speech_summary": False,
                                         "free_view": False, "predict_with_heads": False,
                                         "residual_fusion": False}

    @classmethod
    def from_dict(cls, data: dict) -> "ModelSpec":
        """The spec a bundle saved (to_dict), old bundles included."""
        return cls(**{**cls.BEFORE_THE_SETTING, **data})

    @classmethod
    def of(cls, architecture: Architecture, **data) -> "ModelSpec":
        """The spec of `architecture` (a config's model section) for data of this shape."""
        return cls(**{f.name: getattr(architecture, f.name) for f in fields(Architecture)},
                   **data)

    def to_dict(self) -> dict:
        return _saved(self, self.SAVED_ORDER, self.BEFORE_THE_SETTING)
