"""A registered version's predictions, as `emoalign predict` gives them."""

from pathlib import Path

import pandas as pd

from components.errors import UserError
from components.pyfunc import load
from components.registry.history import resolve
from components.registry.store import connect


def predict_registered(uri: str, requests: pd.DataFrame):
    """(the model version `uri` names, its predictions beside each request's wav)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = connect()
    version = resolve(client, uri)
    mlflow.set_tracking_uri(client.tracking_uri)
    model = load(f"models:/{version.name}/{version.version}")
    try:
        out = model.predict(requests)
    except MlflowException as e:
        raise UserError(f"cannot score the input: {e.message}") from None
    shown = ["(base64 WAV)" if w.startswith("UklGR") else Path(w).name for w in requests["wav"]]
    return version, requests[["wav"]].assign(wav=shown).join(out)
