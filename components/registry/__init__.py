"""Tracking and the model registry, in MLflow: one run per pipeline run, every model a
version of the registered model, and a promotion gate that decides on evidence whether the
new version (alias `challenger`) replaces the one in service (alias `champion`).

    store.py         connecting to the store; credentials kept out of it
    tracking.py      the pipeline run's MLflow run: params, metrics, artifacts, lineage tags
    history.py       alias moves, recorded; the gate's lock; model URIs; promote, rollback
    gate.py          the champion re-scored beside the challenger; the decision
    drift.py         the champion's data statistics, the drift check's default reference
    registration.py  a new version, judged by the gate; whether a schedule needs to train
    card.py          the version's model card (model_card.md): artifact and description
    serving.py       a registered version's predictions (emoalign predict)
"""

from components.registry.drift import (champion_reference, drift_summary, drift_tags,
                                        version_stats)
from components.registry.gate import decide, paired_bootstrap
from components.registry.history import (CHALLENGER, CHAMPION, LOCK_TAG, read_history,
                                          resolve, promote, rollback)
from components.registry.registration import register, retrain_reason
from components.registry.store import (RegistryError, connect, redact, scrub,
                                       tracking_uri)
from components.registry.tracking import flatten, track

__all__ = ["CHALLENGER", "CHAMPION", "LOCK_TAG", "RegistryError", "champion_reference", "connect",
           "decide", "drift_summary", "drift_tags", "flatten", "paired_bootstrap",
           "predict_registered", "promote", "read_history", "redact", "register", "resolve",
           "retrain_reason", "rollback", "scrub", "track", "tracking_uri", "version_stats"]


def __getattr__(name: str):
    # serving.py brings mlflow.pyfunc and torch (a second or more): imported when predicting,
    # not by every command and pipeline task that reads the registry.
    if name == "predict_registered":
        from components.registry.serving import predict_registered
        return predict_registered
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
