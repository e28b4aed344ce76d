"""Reading a feature store (what the features step writes, outputs.StoreFiles): each
utterance's frames, memory-mapped, and the normaliser a model is trained with."""

from pathlib import Path

import numpy as np
import pandas as pd

from components.errors import UserError
from components.outputs import StoreFiles, read_json
from model.spec import FeatureSpec


class FeatureStore:
    """Read access to a store: frames by utterance (memory-mapped) and normalisers."""

    def __init__(self, path: Path, verify: bool = False):
        files = StoreFiles(Path(path))
        self.path = files.folder
        if not (self.path / files.META).is_file():
            raise UserError(f"{self.path} is not a feature store (no store.json); "
                            "run `emoalign features` first")
        if verify and (problem := files.problem()):
            raise UserError(f"feature store {self.path} is {problem}")
        self.meta = read_json(self.path / files.META)
        self.spec = FeatureSpec.from_dict(self.meta["spec"])
        self.index = pd.read_parquet(self.path / files.INDEX)
        self.frames = np.memmap(self.path / files.FRAMES, dtype=self.meta["dtype"], mode="r",
                                shape=(self.meta["n_frames"], self.meta["dim"]))
        self._row = {u: i for i, u in enumerate(self.index["utt_id"])}
        self._normalization = read_json(self.path / files.NORMALIZATION)

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, utt_id: str) -> bool:
        return utt_id in self._row

    def get(self, utt_id: str) -> np.ndarray:
        """Raw frames (T, dim) of one utterance: a view into the memory map, not a copy."""
        row = self._row[utt_id]
        offset, length = self.index.at[row, "offset"], self.index.at[row, "length"]
        return self.frames[offset:offset + length]

    def normalizer(self, held_out_session: int | None, mode: str = "global"):
        """Statistics fitted without the held-out session (None: on every session)."""
        from model.features import Normalizer

        if mode == "none":
            return Normalizer(np.zeros(self.spec.dim, np.float32),
                              np.ones(self.spec.dim, np.float32))
        n = self._normalization
        fitted = n["all"] if held_out_session is None else n["folds"][str(held_out_session)]
        speakers = None
        if mode == "speaker":
            # Each speaker's own statistics, from their own audio (labels are never used).
            speakers = {k: (np.asarray(v["mean"], np.float32), np.asarray(v["std"], np.float32))
                        for k, v in n["speakers"].items()}
        return Normalizer(np.asarray(fitted["mean"], np.float32),
                          np.asarray(fitted["std"], np.float32), speakers)

    def examples(self, inputs, ids, rows: pd.DataFrame) -> list:
        """Model examples of the utterances `ids`: frames from this store, words and label
        from the manifest rows, as `inputs` (model.serving.Inputs) turns them into numbers."""
        return [inputs.example(utt, self.get(utt), rows.at[utt, "transcript"],
                               rows.at[utt, "speaker"], rows.at[utt, "label"]) for utt in ids]
