"""The model as an MLflow pyfunc: a DataFrame of wav (+ transcript) in, label, class
probabilities and the transcript used out; a missing or empty transcript is recognised from
the audio (recognizer.py). The one module of `model/` that knows MLflow: the wrapper around
serving.py that registration logs and `mlflow models serve` loads.

The logged model carries its member bundles (weights, vocabulary, feature spec and
normalisation statistics) as artifacts and this package, `model/`, as its code: all that
serving needs, so it computes features exactly as the pipeline did, whatever is installed
later, in a process where the pipeline's packages cannot be imported.
"""

import base64
import binascii
import contextlib
import io
import importlib.metadata
import sys
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from model import recognizer

# + optional "transcript" (recognised when missing or empty) and "speaker" (for
# per-speaker normalisation)
INPUT_COLUMNS = ("wav",)
# What the pyfunc imports when it loads; pinned to the versions that trained the model.
REQUIREMENTS = ("torch", "torchaudio", "numpy", "pandas", "soundfile", "mlflow")


def decode_wav(value):
    """A path to a WAV file, its bytes, or the bytes base64-encoded (what JSON can carry)."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not isinstance(value, str) or not value:
        raise ValueError("a wav value must be a path or base64-encoded WAV bytes")
    if value.startswith("UklGR"):  # base64 of "RIFF", how every WAV file starts
        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error:
            raise ValueError("the wav value looks like base64 but does not decode") from None
    return value


class _Quiet(contextlib.redirect_stderr):
    """MLflow prints advice to add type hints to `predict` whenever the class is defined or a
    model loads, past any warnings filter. The input here is a DataFrame checked against the
    explicit signature below, so the advice does not apply."""

    def __init__(self):
        super().__init__(io.StringIO())


with _Quiet():
    class EmoalignModel(mlflow.pyfunc.PythonModel):
        def load_context(self, context):
            from model.serving import Predictor

            folds = sorted(k for k in context.artifacts if k.startswith("fold_"))
            self.predictor = Predictor([Path(context.artifacts[k]) for k in folds])

        def predict(self, context, model_input, params=None):
            from model.serving import InputError

            frame = pd.DataFrame(model_input)
            missing = [c for c in INPUT_COLUMNS if c not in frame.columns]
            if missing:
                raise MlflowException(f"input lacks column(s) {', '.join(missing)}; expected wav "
                                      "(path or base64 WAV) and optionally transcript",
                                      error_code=INVALID_PARAMETER_VALUE)
            speakers = frame["speaker"].tolist() if "speaker" in frame.columns else None
            given = frame["transcript"] if "transcript" in frame.columns else [""] * len(frame)
            # Versions logged before recognition have no params: the default recogniser.
            name = (params or {}).get("recognizer") or recognizer.DEFAULT
            try:
                audios = [self.predictor.audio(decode_wav(w)) for w in frame["wav"]]
                transcripts, sources = recognizer.fill_in(audios, list(given), name)
                probs = self.predictor.predict_proba(audios, transcripts, speakers)
            except (InputError, ValueError) as e:
                raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None
            classes = self.predictor.classes
            out = pd.DataFrame({f"p_{c}": probs[:, i] for i, c in enumerate(classes)})
            out.insert(0, "label", [classes[i] for i in probs.argmax(1)])
            return out.assign(transcript=transcripts, transcript_source=sources)


def signature(classes: list[str], recognizer_name: str = recognizer.DEFAULT
              ) -> ModelSignature:
    """The recogniser is a parameter: a request may name another, and the default is the
    `serving.recognizer` the version was registered with."""
    inputs = Schema([ColSpec("string", "wav"), ColSpec("string", "transcript", required=False),
                     ColSpec("string", "speaker", required=False)])
    outputs = Schema([ColSpec("string", "label")]
                     + [ColSpec("double", f"p_{c}") for c in classes]
                     + [ColSpec("string", "transcript"), ColSpec("string", "transcript_source")])
    params = ParamSchema([ParamSpec("recognizer", "string", recognizer_name)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def pinned_requirements(recognizer_name: str = recognizer.DEFAULT) -> list[str]:
    """REQUIREMENTS, and the recogniser's package where it is installed (without it, the
    served model still scores requests that carry their transcripts)."""
    names = list(REQUIREMENTS)
    package = recognizer.RECOGNIZERS[recognizer_name].package
    try:
        importlib.metadata.version(package)
        names.append(package)
    except importlib.metadata.PackageNotFoundError:
        pass
    return [f"{name}=={importlib.metadata.version(name)}" for name in names]


def log_model(fold_bundles: dict[str, Path], classes: list[str], example: pd.DataFrame,
              name: str = "model", recognizer_name: str = recognizer.DEFAULT):
    """Log the pyfunc into the active MLflow run; returns MLflow's ModelInfo. Each fold's
    bundle is stored as artifacts/<fold>.pt."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        artifacts = {}
        for fold, path in sorted(fold_bundles.items()):
            # Every bundle is called model.pt; MLflow would store them all under one name.
            artifacts[f"fold_{fold}"] = shutil.copyfile(path, Path(scratch) / f"{fold}.pt")
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=EmoalignModel(),
            artifacts={k: str(v) for k, v in artifacts.items()},
            code_paths=[str(Path(__file__).resolve().parent)],  # model/, this package
            signature=signature(classes, recognizer_name),
            input_example=example,
            pip_requirements=pinned_requirements(recognizer_name),
        )


def wav_example(wav_path: Path, transcript: str, speaker: str = "") -> pd.DataFrame:
    """One request as a client sends it: the WAV itself base64-encoded, so the example
    stored with the model does not point at a file on this machine."""
    encoded = base64.b64encode(Path(wav_path).read_bytes()).decode("ascii")
    return pd.DataFrame({"wav": [encoded], "transcript": [transcript], "speaker": [speaker]})


# Where versions registered before this wrapper moved here pickled it: their python_model
# names components.pyfunc.EmoalignModel. Loaded in a process that has imported the pipeline's
# own `components` (the gate re-scoring an old champion, `emoalign predict`), that name finds
# this module; in a process of its own the version's code/ folder carries the old module.
FORMER_MODULE = "components.pyfunc"


def load(model_uri: str):
    """mlflow.pyfunc.load_model, without the advice (see _Quiet); versions registered
    before the wrapper moved load too."""
    if "components" in sys.modules:
        sys.modules.setdefault(FORMER_MODULE, sys.modules[__name__])
    with _Quiet():
        return mlflow.pyfunc.load_model(model_uri)
