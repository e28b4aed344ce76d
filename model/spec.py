"""What a model and its speech features are built from: plain settings, free of torch, so a
configuration loads (and a test or the CLI starts) without importing it."""

from dataclasses import asdict, dataclass, fields
from typing import ClassVar

KINDS = ("align", "speech", "text", "late_fusion")
ATTENTIONS = ("additive", "dot")
# Vocabulary ids every model shares: padding, and every word the vocabulary lacks.
PAD_ID, UNK_ID = 0, 1
FEATURE_CODE_VERSION = "1"  # bump when model/features.py changes what it returns


@dataclass
class FeatureSpec:
    """MFCC settings. The `features` section of the config is this spec plus how the store
    keeps the frames (components/config.py)."""

    sample_rate: ClassVar[int] = 16_000  # IEMOCAP's; validation quarantines any other
    n_mfcc: int = 13
    n_mels: int = 40
    win_ms: float = 25.0
    hop_ms: float = 10.0
    deltas: bool = True
    delta_deltas: bool = True
    stack: int = 1       # consecutive frames concatenated into one
    subsample: int = 1   # keep every k-th (stacked) frame: k times shorter sequences
    # Prosody beside the spectral shape: voicing and log-F0 per frame (pitch), and log
    # energy (energy); they get deltas too. F0 is searched between f0_min and f0_max.
    pitch: bool = False
    energy: bool = False
    f0_min: float = 60.0
    f0_max: float = 500.0

    @property
    def base_dim(self) -> int:
        """Values per frame before deltas and stacking."""
        return self.n_mfcc + 2 * self.pitch + self.energy

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
        return {"sample_rate": self.sample_rate, **asdict(self.spec())}

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureSpec":
        """Inverse of to_dict; bundles saved before a setting existed get its default."""
        if data.get("sample_rate", cls.sample_rate) != cls.sample_rate:
            raise ValueError(f"features at {data['sample_rate']} Hz; this code extracts at "
                             f"{cls.sample_rate} Hz")
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})
