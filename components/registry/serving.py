"""A registered version's predictions, as `emoalign predict` gives them."""

from pathlib import Path

import pandas as pd

from components.errors import UserError
from components.registry.history import resolve
from components.registry.store import connect
from model.pyfunc import INPUT_COLUMNS, load
from model.recognizer import DEFAULT


def predict_registered(uri: str, requests: pd.DataFrame, recognizer: str = DEFAULT):
    """(the model version `uri` names, its predictions beside each request's wav). A
    request without a transcript has it recognised by `recognizer`."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = connect()
    version = resolve(client, uri)
    mlflow.set_tracking_uri(client.tracking_uri)
    model = load(f"models:/{version.name}/{version.version}")
    # Versions registered before recognition take no parameters (and know only DEFAULT).
    params = {"recognizer": recognizer} if model.metadata.get_params_schema() else None
    try:
        out = model.predict(requests, params=params)
    except MlflowException as e:
        raise UserError(f"cannot score the input: {e.message}") from None
    shown = ["(base64 WAV)" if w.startswith("UklGR") else Path(w).name for w in requests["wav"]]
    return version, requests[["wav"]].assign(wav=shown).join(out)


def read_requests(batch: str | None, wav: str | None, text: str | None,
                  speaker: str | None = None) -> pd.DataFrame:
    """The requests to score: a CSV of wav (and transcript, speaker) whose relative wav
    paths are read from the CSV's folder, or one wav (with its transcript, speaker). A
    transcript left out is empty: the model recognises it."""
    if batch:
        path = Path(batch)
        if not path.is_file():
            raise UserError(f"batch file not found: {path}")
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, UnicodeDecodeError) as e:
            raise UserError(f"{path} is not a readable CSV: {str(e).splitlines()[0]}") from None
        missing = [c for c in INPUT_COLUMNS if c not in frame.columns]
        if missing:
            raise UserError(f"{path} lacks column(s) {', '.join(missing)} "
                            "(expected wav and optionally transcript, speaker)")
        base = path.resolve().parent
        frame["wav"] = [w if Path(w).is_absolute() or w.startswith("UklGR") else
                        str(base / w) for w in frame["wav"]]
        # Versions registered before recognition demand the column.
        return frame if "transcript" in frame.columns else frame.assign(transcript="")
    if not wav:
        raise UserError("give --wav (and --text, or it is recognised), or --batch CSV")
    if not Path(wav).is_file():
        raise UserError(f"wav file not found: {wav}")
    request = pd.DataFrame({"wav": [str(Path(wav).resolve())], "transcript": [text or ""]})
    return request.assign(speaker=[speaker]) if speaker else request
