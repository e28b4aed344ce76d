"""Registration: the pipeline's model becomes a new version of the registered model (alias
`challenger`), the gate judges it, and `champion` moves when it passes. Also whether a
scheduled run needs to train at all."""

import json
import time
from pathlib import Path

from components.config import Config
from components.lineage import Lineage
from components.outputs import Registered, StepOutputs
from components.registry.card import decided, gather, publish, write_card
from components.registry.drift import drift_summary
from components.registry.gate import (challenge, decide, gate_data, gate_numbers,
                                      infra_check, recorded_predictions)
from components.registry.history import (CHALLENGER, CHAMPION, alias_version, gate_lock,
                                          move_alias)
from components.registry.store import artifact_access, connect, exists_already, scrub

DESCRIPTION = ("IEMOCAP speech + text emotion recognition (emoalign). Aliases: champion = "
               "in service, challenger = newest candidate. history.* tags record every move.")


def register(outputs: StepOutputs, config: Config, run_id: str, out_dir: Path) -> dict:
    """Log the pyfunc into the pipeline's MLflow run, register it as a new version (alias
    challenger), run the gate and move `champion` when it passes. A run whose drift check
    against the champion could not be made (its validation report's `drift_unavailable`)
    is registered and judged, never promoted automatically (gate.decide)."""
    client = connect(consequence="nothing was registered (the run is tracked)")
    name = config.registry.model_name
    tags = {k: v for k, v in client.get_run(run_id).data.tags.items()
            if not k.startswith("mlflow.")}
    metrics = outputs.evaluation.metrics()
    classes = metrics["classes"]
    validation = outputs.validated.report()
    data = gate_data(outputs)
    facts = gather(outputs, config, tags)  # the model card's, before any version exists
    version, swept = _new_version(client, name, outputs, classes, data, run_id, tags,
                                  config.serving.recognizer)
    judged = False
    try:
        with artifact_access(client, f"read back the files of version {version}",
                             "nothing was registered"):
            infra = infra_check(f"models:/{name}/{version}", data, classes,
                                config.registry.infra_check_utterances,
                                compare_probabilities=config.protocol == "holdout")
        with gate_lock(client, name):
            champion_version = alias_version(client, name, CHAMPION)
            champion, challenger_ua = None, float(metrics["ua"])
            if champion_version is not None:
                with artifact_access(client, f"score champion version {champion_version}",
                                     "nothing was registered"):
                    champion, same_utterances_ua = _challenge(client, name, champion_version,
                                                              data, classes, config)
                challenger_ua = same_utterances_ua or challenger_ua
            promoted, reason = decide(config, challenger_ua, infra, champion,
                                      validation.get("drift_unavailable"))
            numbers = gate_numbers(config, challenger_ua, int(len(data)), infra, champion)
            numbers["drift"] = drift_summary(validation)  # beside the figures
            _record_decision(client, name, version, promoted, reason, numbers, infra, tags)
            judged = True
            champion_now = alias_version(client, name, CHAMPION)
    except BaseException:
        if not judged:  # a judged version (perhaps the champion now) is never taken back
            _withdraw(client, name, version)
        raise
    result = {"model_name": name, "model_version": str(version), "promoted": promoted,
              "reason": reason, "champion_version": champion_now, "mlflow_run_id": run_id,
              "numbers": numbers, "infra_check": infra, "swept_incomplete": swept,
              "model_uri": f"models:/{name}/{version}",
              "drift_unavailable": validation.get("drift_unavailable")}
    registered = Registered(Path(out_dir))
    registered.folder.mkdir(parents=True, exist_ok=True)
    # The model card: beside registration.json, logged with the run, the version's
    # description.
    card_path = write_card(decided(facts, result), registered.folder)
    with artifact_access(client, f"store the model card of version {version}",
                         f"version {version} is registered and judged without its card"):
        result["model_card"] = publish(client, name, str(version), run_id, card_path)
    registered.path.write_text(json.dumps(result, indent=1))
    return result


def _new_version(client, name: str, outputs: StepOutputs, classes: list[str], data,
                 run_id: str, tags: dict, recognizer: str) -> tuple[str, list[str]]:
    """Log the pyfunc into the run and register it; (new version, versions swept)."""
    import mlflow

    from model.pyfunc import log_model, wav_example

    # The smallest test utterance becomes the input example stored with the model.
    shortest = data.assign(size=data["wav_path"].map(lambda p: Path(p).stat().st_size)) \
        .sort_values(["size", "utt_id"]).iloc[0]
    example = wav_example(shortest["wav_path"], shortest["transcript"], shortest["speaker"])
    mlflow.set_tracking_uri(client.tracking_uri)
    with artifact_access(client, "store the model's files", "nothing was registered"), \
            mlflow.start_run(run_id=run_id):
        info = log_model(outputs.trained.bundles(), classes, example,
                         recognizer_name=recognizer)
    ensure_registered_model(client, name)
    swept = _sweep_incomplete(client, name)
    return mlflow.register_model(info.model_uri, name, tags=tags).version, swept


def ensure_registered_model(client, name: str) -> None:
    """Create the registered model `name` unless it exists; any other failure is raised."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description=DESCRIPTION)
    except MlflowException as e:
        if not exists_already(e):  # it exists already: the usual case
            raise


def _challenge(client, name: str, champion_version: str, data, classes: list[str],
               config: Config):
    """The champion scored on the challenger's utterances (under loso from its own recorded
    out-of-fold predictions where they cover them)."""
    recorded = recorded_predictions(
        client, client.get_model_version(name, champion_version).run_id, classes
    ) if config.protocol == "loso" else None
    return challenge(f"models:/{name}/{champion_version}", champion_version, data, classes,
                     config, recorded)


def _withdraw(client, name: str, version: str) -> None:
    """A version whose registration failed before the gate decided is deleted, so none is
    left half-registered (its run keeps the logged model). If the registry cannot even do
    that, the version is marked incomplete, and the next register step sweeps it."""
    # Broad on purpose, and nothing is decided on them: this runs while the failure that
    # stopped the gate is raised, and must never replace it.
    try:
        client.delete_model_version(name, version)
        return
    except Exception:  # noqa: BLE001
        pass
    try:
        client.set_model_version_tag(name, version, "gate.decision", "incomplete")
    except Exception:  # noqa: BLE001
        pass


def _record_decision(client, name: str, version: str, promoted: bool, reason: str,
                     numbers: dict, infra: dict, tags: dict) -> None:
    """The decision as tags and description on the version; it becomes the challenger, and
    the champion when it passed."""
    decision_tags = {"gate.decision": "promoted" if promoted else "rejected",
                     "gate.reason": reason, "gate.numbers": json.dumps(numbers),
                     "gate.infra_check": json.dumps(infra)}
    for key, value in decision_tags.items():
        client.set_model_version_tag(name, version, key, scrub(value))
    client.update_model_version(name, version, description=(
        f"{'Promoted to champion' if promoted else 'Not promoted'}: {reason}. "
        f"Pipeline run {tags.get('pipeline_run')}, data {tags.get('data_hash')}, "
        f"code {tags.get('git_sha')}."))
    move_alias(client, name, CHALLENGER, version, "candidate",
               f"pipeline run {tags.get('pipeline_run')}", actor="emoalign register")
    if promoted:
        move_alias(client, name, CHAMPION, version, "auto", reason, numbers,
                   actor="emoalign gate")


def _sweep_incomplete(client, name: str) -> list[str]:
    """Versions a crashed register step left without a gate decision: say so on them."""
    swept = []
    for version in client.search_model_versions(f"name='{name}'"):
        if "gate.decision" not in version.tags and \
                time.time() - version.creation_timestamp / 1000 > 60:
            client.set_model_version_tag(name, version.version, "gate.decision", "incomplete")
            client.set_model_version_tag(name, version.version, "gate.reason",
                                         "its register step stopped before the gate decided")
            swept.append(version.version)
    return swept


def retrain_reason(config: Config, lineage: Lineage) -> str | None:
    """Why the pipeline should train now, or None when the champion is this very model: the
    same data (its hash), the same model code (lineage.code_identity: the files on the path
    from data to model) and the same values of the settings that shape a model (the keys
    marked shapes_model, read back from the params the champion's run logged). Each
    difference is named. The commit, files off that path (README, docs, tests), thread and
    worker counts, the work directory, the webhook and the gate's settings change nothing.
    A registry that cannot be read is a RegistryError naming the store; only a registered
    model that does not exist, or one without the champion alias, has no champion."""
    from components.lineage import changed_code, code_identity

    client = connect(consequence="the retrain check could not decide; nothing was trained")
    name = config.registry.model_name
    champion = _champion(client, name)
    if isinstance(champion, str):
        return champion  # why there is none
    version, params = champion
    tags, reasons = version.tags, []
    if tags.get("data_hash") != lineage.data_hash:
        reasons.append(f"data changed: {tags.get('data_hash', '?')} -> {lineage.data_hash}")
    files = changed_code(tags, code_identity())
    if files is None:
        reasons.append(f"code changed: champion version {version.version} (commit "
                       f"{tags.get('git_sha', '?')[:12]}) predates the code identity")
    elif files:
        reasons.append("code changed: " + _listed(files))
    if params is None:
        reasons.append(f"config unknown: the run of champion version {version.version} "
                       f"({version.run_id or 'none'}) is not in the store")
    elif settings := changed_settings(config, params):
        reasons.append("config changed: " + _listed(settings))
    return "; ".join(reasons) or None


def changed_settings(config: Config, logged: dict[str, str]) -> list[str]:
    """`key before -> now` for each model-shaping key whose value differs from what a run
    logged (tracking.config_params); a key the run did not log, added since, had its
    default then."""
    from components.config import model_shaping_keys
    from components.registry.tracking import config_params

    now, defaults = config_params(config), config_params(Config())
    return [f"{key} {before} -> {now[key]}" for key in model_shaping_keys()
            if (before := logged.get(key, defaults[key])) != now[key]]


def _champion(client, name: str):
    """(the champion's version, its run's params, None when its run is gone), or why there
    is no champion: the registered model does not exist, or has no champion alias. Any
    other failure to read them (store.read_errors) is a RegistryError naming the store; a
    bug is raised as it is."""
    from components.registry.store import (RegistryError, is_missing, one_line,
                                           read_errors, redact)

    def unreadable(what: str, e: Exception) -> RegistryError:
        return RegistryError(f"cannot read {what} from MLflow tracking store "
                             f"{redact(client.tracking_uri)} ({one_line(e)}); the retrain "
                             "check could not decide, nothing was trained")

    try:
        model = client.get_registered_model(name)
    except read_errors() as e:
        if is_missing(e):
            return f"no champion yet: there is no registered model {name!r}"
        raise unreadable(f"registered model {name!r}", e) from None
    # The alias read off the model: MLflow's own lookup by alias answers a missing alias
    # with INVALID_PARAMETER_VALUE, which it also uses for other mistakes.
    number = (model.aliases or {}).get(CHAMPION)
    if number is None:
        return f"no champion yet: registered model {name!r} has no {CHAMPION!r} alias"
    try:
        version = client.get_model_version(name, str(number))
    except read_errors() as e:
        raise unreadable(f"champion version {number} of {name!r}", e) from None
    if not version.run_id:
        return version, None
    try:
        return version, client.get_run(version.run_id).data.params
    except read_errors() as e:
        if is_missing(e):
            return version, None
        raise unreadable(f"the run of champion version {number} of {name!r}", e) from None


def _listed(items: list[str], most: int = 8) -> str:
    more = len(items) - most
    return ", ".join(items[:most]) + (f" and {more} more" if more > 0 else "")
