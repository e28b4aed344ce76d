"""A registered version serves with `model/` alone: the wrapper MLflow loads lives beside the
model's serving code, a version ships that package and nothing of the pipeline, and versions
logged before the wrapper moved still load."""

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from model import pyfunc

LEGACY = Path(__file__).parent / "data" / "pyfunc_124320b"
CLASSES = ("neutral", "happy", "angry", "sad")

# Run in a process of its own: every import of the pipeline's packages fails, as where only
# a registered version's code is at hand.
SERVE_WITHOUT_PIPELINE = """
import importlib.abc, json, sys

class NoPipeline(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("components", "pipelines", "corpora"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)

sys.meta_path.insert(0, NoPipeline())
import mlflow.pyfunc, pandas as pd

model = mlflow.pyfunc.load_model(sys.argv[1])
# The second request has no transcript: the version's own code recognises one.
out = model.predict(pd.DataFrame({"wav": [sys.argv[2]] * 2, "transcript": ["oh no", ""]}))
blocked = [m for m in sys.modules if m.split(".")[0] in ("components", "pipelines", "corpora")]
print(json.dumps({"row": out.iloc[0].to_dict(), "recognised": out.iloc[1].to_dict(),
                  "imported": blocked}))
"""


def _probabilities(row) -> np.ndarray:
    return np.array([row[f"p_{c}"] for c in CLASSES], dtype=float)


def test_a_version_logged_before_the_wrapper_moved_loads_and_predicts(small_corpus):
    # What makes it old: its pickled python_model names the wrapper's former module.
    assert b"components.pyfunc" in (LEGACY / "python_model.pkl").read_bytes()
    wav = next(small_corpus.glob("Session1/sentences/wav/*/*.wav"))
    out = pyfunc.load(str(LEGACY)).predict(pd.DataFrame({"wav": [str(wav)],
                                                          "transcript": ["oh no"]}))
    assert out.loc[0, "label"] in CLASSES
    assert _probabilities(out.loc[0]).sum() == pytest.approx(1, abs=1e-5)


@pytest.mark.slow
def test_a_registered_version_ships_model_alone_and_serves_without_the_pipeline(
        two_runs, tmp_path):
    mlflow.set_tracking_uri(two_runs["env"]["MLFLOW_TRACKING_URI"])
    local = Path(mlflow.artifacts.download_artifacts("models:/emoalign/1",
                                                     dst_path=str(tmp_path / "version")))
    assert sorted(p.name for p in (local / "code").iterdir()) == ["model"]
    assert (local / "code" / "model" / "pyfunc.py").is_file()
    wav = next(two_runs["corpora"][0].glob("Session5/sentences/wav/*/*.wav"))
    served = subprocess.run([sys.executable, "-c", SERVE_WITHOUT_PIPELINE, str(local),
                             str(wav)], capture_output=True, text=True, cwd=tmp_path,
                            timeout=300)
    assert served.returncode == 0, served.stderr[-2000:]
    answer = json.loads(served.stdout.strip().splitlines()[-1])
    assert answer["imported"] == []
    assert answer["row"]["label"] in CLASSES
    assert answer["row"]["transcript_source"] == "given"
    recognised = answer["recognised"]
    assert recognised["transcript_source"] == ("recognised" if recognised["transcript"]
                                               else "none")
    assert recognised["label"] in CLASSES
    in_process = pyfunc.load(str(local)).predict(pd.DataFrame({"wav": [str(wav)],
                                                                "transcript": ["oh no"]}))
    np.testing.assert_allclose(_probabilities(answer["row"]),
                               _probabilities(in_process.loc[0]), atol=1e-6)
