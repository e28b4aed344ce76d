"""The data the current champion was trained on, as statistics: the default reference of
validation's drift check (`validate.drift_reference: champion`), and the drift a new version
was registered with, as tags and in the gate's decision.

The reference the pipeline passes from its fetch task to its validate task is a string (the
contract's, components/outputs.py's Validated): a champion version (`models:/<name>/<version>`),
whose statistics the validate task downloads (version_stats); NO_CHAMPION, a first run with
nothing to compare with; or `no drift check: <why>` when the registry could not say which
champion to compare with. Either way, a drift check that was asked for and could not be made
(the champion not looked up, its statistics not read) becomes data in the validate step's
DriftReference: `drift_unavailable` in the validation report (why), the `drift.unavailable`
tag, and a version the gate does not promote automatically.
"""

from pathlib import Path

from components.outputs import Validated
from components.registry.history import CHAMPION
from components.registry.store import connect, is_missing, one_line, read_errors

# Where tracking logs the validate step's files (tracking._artifact_groups): its stats.json.
STATS_ARTIFACT = f"validate/{Validated.STATS}"
# A first run: no registered model, or no champion alias yet. Promotion goes on as usual.
NO_CHAMPION = Validated.NO_CHAMPION
# Any other reference that starts so says why the check asked for could not be made.
NO_CHECK = Validated.NO_CHECK
# On the run and its registered versions: why the drift check could not be made.
UNAVAILABLE_TAG = "drift.unavailable"


def unavailable(why: str) -> str:
    """The reference, and the label, of a drift check that could not be made, and why."""
    return NO_CHECK + why


def champion_reference(model_name: str) -> str:
    """The current champion as `models:/<name>/<version>`; NO_CHAMPION when the registered
    model or its champion alias does not exist yet; or, when the registry cannot be read,
    `unavailable(why)`, which the validate step records as a drift check that was not
    possible (the run trains and registers, and the gate does not promote it automatically).
    Resolved when a run starts (the fetch step, never cached), so the validate step's inputs,
    and KFP's cache key, name the champion it compares with. A bug raises."""
    try:
        client = connect(consequence="no drift check")
        model = client.get_registered_model(model_name)
    except read_errors() as e:
        if is_missing(e):
            return NO_CHAMPION
        why = f"the champion of {model_name!r} cannot be looked up: {one_line(e)}"
        print(unavailable(why))
        return unavailable(why)
    version = model.aliases.get(CHAMPION)
    return NO_CHAMPION if version is None else f"models:/{model_name}/{version}"


def version_stats(uri: str, dest: Path) -> tuple[Path | None, str, str | None]:
    """The arguments of a validate.DriftReference for the version `uri`: (the stats.json of
    the data it was trained on, downloaded into dest, "champion version N of 'name'", None);
    or, when they cannot be read (the version, its run or the file is gone, the store does
    not answer), (None, the label saying so, why). A bug raises."""
    import mlflow

    name, version = uri.removeprefix("models:/").rsplit("/", 1)
    try:
        client = connect(consequence="no drift check")
        run_id = client.get_model_version(name, version).run_id
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=STATS_ARTIFACT, dst_path=str(dest),
            tracking_uri=client.tracking_uri)
    except read_errors() as e:
        why = (f"the statistics of champion version {version} of {name!r} ({STATS_ARTIFACT} "
               f"of its run) cannot be read: {one_line(e)}")
        print(unavailable(why))
        return None, unavailable(why), why
    return Path(path), f"champion version {version} of {name!r}", None


def drift_tags(validation_report: dict) -> dict[str, str]:
    """The drift a run's data showed, as tags for its run and its registered version; with
    UNAVAILABLE_TAG when the drift check asked for could not be made."""
    tags = {"drift.reference": validation_report.get("drift_reference") or "none"}
    for row in validation_report.get("drift") or []:
        tags[f"drift.{row['metric']}"] = f"{row['value']:.4f} ({row['status']})"
    if validation_report.get("drift_unavailable"):
        tags[UNAVAILABLE_TAG] = validation_report["drift_unavailable"]
    return tags


def drift_summary(validation_report: dict) -> str:
    """The drift in a phrase, for the gate's decision."""
    rows = validation_report.get("drift") or []
    against = validation_report.get("drift_reference") or "no reference"
    if not rows:
        return against
    return f"data drift against {against}: " + ", ".join(
        f"{r['metric']} {r['value']:.3f} ({r['status']})" for r in rows)
