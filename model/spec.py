"""What a model and its speech features are built from: plain settings, free of torch, so a
configuration loads (and a test or the CLI starts) without importing it.

A setting is declared once, with its default and what it does (`setting`): the config
(components/config.py) extends these classes, and configs/default.yaml is generated from
them."""

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, ClassVar

KINDS = ("align", "speech", "text", "late_fusion")
ATTENTIONS = ("additive", "dot", "multihead")
CELLS = ("lstm", "gru")
WORD_POOLINGS = ("max", "attention")
FEATURE_KINDS = ("mfcc", "spectrum")
UNKNOWN_WORD_INITS = ("normal", "uniform")  # word vectors of words a vector file lacks
# Vocabulary ids every model shares: padding, and every word the vocabulary lacks.
PAD_ID, UNK_ID = 0, 1
FEATURE_CODE_VERSION = "1"  # bump when model/features.py changes what it returns


def setting(default: Any = MISSING, help: str = "", factory=MISSING) -> Any:
    """A dataclass field that is a config key: its default and the line of help that
    configs/default.yaml shows beside it."""
    if isinstance(default, list):
        default, factory = MISSING, (lambda value=default: list(value))
    return field(default=default, default_factory=factory, metadata={"help": help})


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

    sample_rate: ClassVar[int] = 16_000  # IEMOCAP's; validation quarantines any other
    # The settings stores and bundles have always listed; those added since are listed only
    # when they differ from their defaults (_saved), so today's stores keep their cache key.
    SAVED_ALWAYS: ClassVar[tuple] = ("n_mfcc", "n_mels", "win_ms", "hop_ms", "deltas",
                                     "delta_deltas", "stack", "subsample", "pitch", "energy",
                                     "f0_min", "f0_max")
    kind: str = setting("mfcc", "mfcc | spectrum (the magnitude |STFT|, n_fft/2 + 1 bins per "
                                "frame: 257 at 25 ms windows; no log, n_mfcc and n_mels "
                                "unused)")
    n_mfcc: int = setting(13, "cepstral coefficients per frame")
    n_mels: int = setting(40, "mel bands they are computed from")
    win_ms: float = setting(25.0, "analysis window (ms)")
    hop_ms: float = setting(10.0, "frame shift (ms)")
    deltas: bool = setting(True, "+ first differences of every value")
    delta_deltas: bool = setting(True, "+ second differences")
    stack: int = setting(1, "consecutive frames concatenated into one")
    subsample: int = setting(1, "keep every k-th frame (shorter sequences for the encoder)")
    # Prosody beside the spectral shape. Off here: a model bundle saved before these
    # settings existed was trained without them (the config turns them on).
    pitch: bool = setting(False, "+ voicing and log-F0 per frame (YIN), with their deltas")
    energy: bool = setting(False, "+ log energy per frame, with its deltas")
    f0_min: float = setting(60.0, "F0 search range (Hz)")
    f0_max: float = setting(500.0)
    pre_emphasis: float = setting(0.0, "x[t] - a x[t-1] on the waveform before the MFCC or "
                                       "spectrum (not pitch or energy); 0: none")
    max_seconds: float = setting(0.0, "each utterance cut to its first this many seconds, in "
                                      "training and serving alike; 0: whole")

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
        return {"sample_rate": self.sample_rate, **_saved(self.spec(), self.SAVED_ALWAYS)}

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureSpec":
        """Inverse of to_dict; bundles saved before a setting existed get its default."""
        if data.get("sample_rate", cls.sample_rate) != cls.sample_rate:
            raise ValueError(f"features at {data['sample_rate']} Hz; this code extracts at "
                             f"{cls.sample_rate} Hz")
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass
class Architecture:
    """The network's shape, as a user chooses it: the `model` section of the config extends
    it, and a trained model's ModelSpec adds what the data decide."""

    kind: str = setting("align", "align | speech | text | late_fusion")
    attention: str = setting("additive", "additive (the paper) | dot (scaled dot product) | "
                                         "multihead (scaled dot product in attention_heads "
                                         "heads of 2 * hidden / heads values: the authors' "
                                         "code)")
    embed_dim: int = setting(100, "word embedding size")
    hidden: int = setting(64, "recurrent units per direction")
    attention_dim: int = setting(64, "attention's projection size (additive and dot)")
    frame_pool: int = setting(5, "frames averaged before the speech LSTM (50 ms steps)")
    dropout: float = setting(0.3)
    alignment_prior: float = setting(0.1, "align only: width of the diagonal prior on the "
                                     "attention, as a share of the utterance (0: none)")
    cell: str = setting("lstm", "lstm | gru: the cell of every recurrent layer")
    attention_heads: int = setting(8, "attention multihead: heads (must divide 2 * hidden)")
    word_pooling: str = setting("max", "align: how the fusion states become one vector: max "
                                       "over words | attention (u = tanh(W h + b), weights "
                                       "softmax(u . c) over the words; the authors' code)")
    frame_projection: int = setting(0, "units of the per-frame relu layer before the speech "
                                       "LSTM; 0: hidden")
    encoder_dropout: bool = setting(False, "dropout also after the frame projection, after "
                                           "each encoder and on the aligned speech (the "
                                           "authors' code); false: on the word embeddings "
                                           "and before the output layer only")


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
    BEFORE_THE_SETTING: ClassVar[dict] = {"alignment_prior": 0.0}

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
