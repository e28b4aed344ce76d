"""The data the current champion was trained on, as statistics: the default reference of
validation's drift check (`validate.drift_reference: champion`), and the drift a new version
was registered with, as tags and in the gate's decision."""

from pathlib import Path

from components.registry.history import CHAMPION, alias_version, registered_model
from components.registry.store import RegistryError, connect

# Where tracking logs the validate step's files (tracking._artifact_groups): its stats.json.
STATS_ARTIFACT = "validate/stats.json"


def champion_reference(model_name: str) -> str:
    """The current champion as `models:/<name>/<version>`, or why there is none to compare
    with ("no drift check: ..."). Resolved when a run starts (the fetch step, never cached),
    so the validate step's inputs, and KFP's cache key, name the champion it compares with.
    Never raises: a store that cannot be read costs the drift check alone, said in one line."""
    try:
        client = connect(consequence="no drift check")
        try:
            registered_model(client, model_name)
        except RegistryError:
            return "no drift check: no champion yet"
        version = alias_version(client, model_name, CHAMPION)
    except Exception as e:  # noqa: BLE001
        return _unreadable("the champion's", e)
    if version is None:
        return "no drift check: no champion yet"
    return f"models:/{model_name}/{version}"


def version_stats(uri: str, dest: Path) -> tuple[Path | None, str]:
    """(the stats.json of the data the version `uri` was trained on, downloaded into dest,
    and what it is: "champion version N of 'name'"), or (None, why there is no drift check).
    Never raises."""
    import mlflow

    name, version = uri.removeprefix("models:/").rsplit("/", 1)
    try:
        client = connect(consequence="no drift check")
        run_id = client.get_model_version(name, version).run_id
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=STATS_ARTIFACT, dst_path=str(dest),
            tracking_uri=client.tracking_uri)
    except Exception as e:  # noqa: BLE001
        return None, _unreadable(f"champion version {version}'s", e)
    return Path(path), f"champion version {version} of {name!r}"


def _unreadable(whose: str, error: Exception) -> str:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
    label = (f"no drift check: {whose} statistics cannot be read "
             f"({type(error).__name__}{': ' + reason if reason else ''})")
    print(label)
    return label


def drift_tags(validation_report: dict) -> dict[str, str]:
    """The drift a run's data showed, as tags for its run and its registered version."""
    tags = {"drift.reference": validation_report.get("drift_reference") or "none"}
    for row in validation_report.get("drift") or []:
        tags[f"drift.{row['metric']}"] = f"{row['value']:.4f} ({row['status']})"
    return tags


def drift_summary(validation_report: dict) -> str:
    """The drift in a phrase, for the gate's decision."""
    rows = validation_report.get("drift") or []
    against = validation_report.get("drift_reference") or "no reference"
    if not rows:
        return against
    return f"data drift against {against}: " + ", ".join(
        f"{r['metric']} {r['value']:.3f} ({r['status']})" for r in rows)
