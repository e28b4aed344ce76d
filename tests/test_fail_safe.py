"""Fail safe, and say so: a champion whose data statistics cannot be read leaves the drift
check undone, and the gate then promotes nothing automatically; the version's tags, the gate's
reason, the model card and the alert say why, and a person can still promote it. Then each
exception handler of components/registry/ that decides something, raised at with the error
it means (the decision it is there for) and with another one (raised, or failing safe).

The whole scenario runs in this process, on the shared `prepared` corpus: a model trained
from it, tracked and registered as the champion through the registry's own functions, its
validate/stats.json deleted from the artifact store, then the pipeline's fetch and validate
tasks (their KFP functions, as a run calls them), tracking and registration again."""

import json
import types
from pathlib import Path

import pandas as pd
import pytest
from kfp import dsl
from kfp.dsl import HTML, Dataset, Metrics
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (INTERNAL_ERROR, RESOURCE_ALREADY_EXISTS,
                                          RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE)

from components import folds, notify, registry, reporting, train, validate
from components.config import Config, load_config
from components.lineage import Lineage
from components.member import run_member
from components.outputs import StepOutputs, Validated
from components.registry import card, drift, gate, history, registration, store
from conftest import GATE
from pipelines import cli, kfp_components, local

NAME = "emoalign"


def _trained(prepared: dict, config: Config, out: Path) -> tuple[Path, Path]:
    """The prepared corpus's model and evaluation, as the pipeline's member and summarize
    tasks make them (pipelines/inprocess.py): (model folder, evaluation folder)."""
    features, rows = train.load_inputs(prepared["store"], prepared["validated"], config)
    members = []
    for task in folds.plan(rows, config):
        member = out / "tasks" / task.member
        run_member(task, features, rows, config, member / "train", member / "evaluate")
        members.append(member)
    reporting.collect_models([m / "train" for m in members], out / "train", config)
    reporting.collect([m / "evaluate" for m in members], out / "train", out / "evaluate",
                      config)
    return out / "train", out / "evaluate"


def _fetch_and_validate(prepared: dict, config: Config, out: Path) -> str:
    """The pipeline's fetch task (which resolves the champion) and its validate task on the
    prepared corpus, into out; the drift reference fetch passed on."""
    fetched = kfp_components.fetch.python_func(
        corpus=str(prepared["corpus"]), dvc_repo="", dvc_rev="", data_hash="md5-of-the-corpus",
        git_sha="0" * 40, git_dirty=False, config_yaml=config.to_yaml(), protocol="", seed=-1)
    out.mkdir(parents=True)
    kfp_components.validate.python_func(
        manifest=Dataset(name="manifest", uri=str(prepared["validated"].parent / "ingest")),
        config_yaml=fetched.data_config_yaml, drift_reference=fetched.drift_reference,
        validated=Dataset(name="validated", uri=str(out / "validated")),
        report=HTML(name="report", uri=str(out / "report.html")),
        checks=Metrics(name="checks", uri=str(out / "checks")))
    return fetched.drift_reference


def _track_and_register(prepared: dict, config: Config, validated: Path, model: Path,
                        evaluation: Path, pipeline_run: str, out: Path
                        ) -> tuple[dict, StepOutputs]:
    """The pipeline's track and register tasks on these outputs; (registration, outputs)."""
    outputs = StepOutputs(prepared["validated"].parent / "ingest", validated, model, evaluation,
                          registration_dir=out / "register")
    tracked = registry.track(outputs, config, Lineage(str(prepared["corpus"]),
                                                      "md5-of-the-corpus", "0" * 40, False,
                                                      pipeline_run), out / "track")
    return registry.register(outputs, config, tracked["run_id"], out / "register"), outputs


def test_a_champion_whose_statistics_cannot_be_read_promotes_nothing_and_says_why(
        prepared, tracking_store, tmp_path, monkeypatch):
    config = load_config(None, GATE + ["notify.webhook=http://127.0.0.1:9/hook"])
    model, evaluation = _trained(prepared, config, tmp_path / "members")

    # The first run: no champion yet, so no drift check, and promotion as always.
    assert _fetch_and_validate(prepared, config, tmp_path / "run1") == drift.NO_CHAMPION
    first, _ = _track_and_register(prepared, config, tmp_path / "run1" / "validated", model,
                                   evaluation, "run-1", tmp_path / "run1")
    assert first["promoted"] and first["model_version"] == "1"
    assert first["drift_unavailable"] is None

    # The champion's statistics disappear from its artifact store.
    client = MlflowClient(tracking_store, tracking_store)
    artifacts = client.get_run(first["mlflow_run_id"]).info.artifact_uri
    stats = Path(artifacts.removeprefix("file://")) / drift.STATS_ARTIFACT
    assert stats.is_file()
    stats.unlink()

    # The same model and data again: against itself it would pass the gate (delta 0); with
    # no drift check possible it is registered and judged, not promoted.
    reference = _fetch_and_validate(prepared, config, tmp_path / "run2")
    assert reference == f"models:/{NAME}/1"
    report = json.loads((tmp_path / "run2" / "validated" / Validated.REPORT).read_text())
    why = report["drift_unavailable"]
    assert why.startswith(f"the statistics of champion version 1 of '{NAME}' "
                          f"({drift.STATS_ARTIFACT} of its run) cannot be read: "
                          "MlflowException: ")
    assert report["drift"] is None and report["passed"]
    assert report["drift_reference"] == drift.unavailable(why)
    assert validate.NOT_PROMOTED in validate.drift_line(report)
    second, outputs = _track_and_register(prepared, config, tmp_path / "run2" / "validated",
                                          model, evaluation, "run-2", tmp_path / "run2")
    assert second["model_version"] == "2" and not second["promoted"]
    assert second["champion_version"] == "1" and second["drift_unavailable"] == why
    reason = second["reason"]
    assert reason.startswith(f"no drift check was possible ({why}), so the gate leaves the "
                             "promotion to a person; UA ")
    assert "not worse than the champion" in reason  # the figures, for that person
    assert "\n" not in reason

    # The version's tags.
    version = client.get_model_version(NAME, "2")
    assert version.tags["gate.decision"] == "rejected"
    assert version.tags["gate.reason"] == reason
    assert version.tags[drift.UNAVAILABLE_TAG] == why
    assert version.tags["drift.reference"] == drift.unavailable(why)
    assert json.loads(version.tags["gate.numbers"])["drift"] == drift.unavailable(why)
    assert str(client.get_registered_model(NAME).aliases["champion"]) == "1"

    # The model card: the register task's, and the version's own (logged with its run).
    text = (outputs.registration_dir / card.CARD_FILE).read_text()
    assert card.read(client, version) == text
    assert f"**Not promoted** (champion now: version 1): {reason}." in text
    assert f"Drift: {drift.unavailable(why)}." in text
    assert ("The gate promotes no version whose data it could not check for drift against "
            "the champion's") in text
    assert f"`emoalign promote --name {NAME} --version 2 --reason" in text

    # The alert: what the exit task reads from the store, and what the local runner sends.
    sent = []
    monkeypatch.setattr(notify, "send", lambda url, body, **kw: sent.append(body) or True)
    kfp_components.notify.python_func(
        status=dsl.PipelineTaskFinalStatus("SUCCEEDED", "projects/p/pipelineJobs/j",
                                           "exit-handler-1", None, None),
        config_yaml=config.to_yaml(), pipeline_run="run-2", send=True)
    summary = {"pipeline_run": "run-2", "retrained": True, "model_version": "2",
               "promoted": second["promoted"], "promotion_reason": reason,
               "mlflow_run_id": second["mlflow_run_id"], **local._data_summary(outputs)}
    local.notify_run(config, summary=summary)
    for body in sent:
        assert (body["model_version"], body["gate_decision"]) == ("2", "rejected")
        assert body["gate_reason"] == reason and body["drift_unavailable"] == why
    assert [body["reported_by"] for body in sent] == ["exit_task", "local_runner"]

    # A person who has looked at the data promotes it, on the record.
    assert cli.main(["promote", "--version", "2", "--reason", "drift checked by hand"]) == 0
    assert str(client.get_registered_model(NAME).aliases["champion"]) == "2"
    move = registry.read_history(client, NAME)[-1]
    assert (move["action"], move["from"], move["to"]) == ("manual", "1", "2")


# ---- the reference, the report and the decision ------------------------------------------

def test_each_drift_reference_reads_as_what_it_is(tmp_path):
    why = "the champion of 'emoalign' cannot be looked up: RegistryError: down"
    named = validate.DriftReference.named
    assert named("none") == validate.DriftReference(
        None, "no drift check (validate.drift_reference is none)")
    assert named(drift.NO_CHAMPION) == validate.DriftReference(None, drift.NO_CHAMPION)
    assert named(drift.unavailable(why)) == validate.DriftReference(
        None, drift.unavailable(why), why)
    assert named(str(tmp_path / "stats.json")).stats == tmp_path / "stats.json"
    assert named("champion").unavailable is None  # the step alone: nothing was looked up


def test_decide_promotes_nothing_it_could_not_check_for_drift():
    config, ok = Config(), {"ok": True}
    champion = {"version": "3", "ua": 0.70, "n": 100, "ci_low": -0.05, "ci_high": 0.03}
    for against in (None, champion):
        promoted, reason = registry.decide(config, 0.8, ok, against)
        assert promoted
        held, why = registry.decide(config, 0.8, ok, against, "stats gone")
        assert not held
        assert why == (f"no drift check was possible (stats gone), so the gate leaves the "
                       f"promotion to a person; {reason}")
    # Rejected on its scores already: that comes first, the missing check beside it.
    for ua, infra in ((0.8, {"ok": False, "error": "boom"}), (0.6, ok)):
        rejected, reason = registry.decide(config, ua, infra, champion)
        assert registry.decide(config, ua, infra, champion, "stats gone") == \
            (False, f"{reason}; nor was a drift check possible (stats gone)")
    assert registry.decide(config, 0.8, ok, champion, None) == \
        registry.decide(config, 0.8, ok, champion)


def test_the_run_and_its_versions_carry_why_no_drift_check_was_possible():
    report = {"drift_reference": drift.unavailable("why"), "drift": None,
              "drift_unavailable": "why"}
    assert drift.drift_tags(report) == {"drift.reference": "no drift check: why",
                                        drift.UNAVAILABLE_TAG: "why"}
    assert drift.UNAVAILABLE_TAG not in drift.drift_tags(
        {"drift_reference": drift.NO_CHAMPION, "drift": None, "drift_unavailable": None})


# ---- each handler: the error it means, and another ---------------------------------------

def _mlflow_error(code: int) -> MlflowException:
    return MlflowException("said the store", error_code=code)


def _client(**methods):
    return types.SimpleNamespace(tracking_uri="sqlite:////nowhere/mlflow.db", **methods)


def _raises(error: BaseException):
    def call(*args, **kwargs):
        raise error
    return call


def test_champion_reference_no_model_or_alias_is_no_champion_yet(tracking_store):
    assert registry.champion_reference(NAME) == drift.NO_CHAMPION  # no registered model
    MlflowClient(tracking_store).create_registered_model(NAME)
    assert registry.champion_reference(NAME) == drift.NO_CHAMPION  # no champion alias


def test_champion_reference_a_registry_that_cannot_say_is_an_unavailable_check(monkeypatch):
    for error in (_mlflow_error(INTERNAL_ERROR), OSError("connection reset")):
        monkeypatch.setattr(drift, "connect", lambda **kw: _client(
            get_registered_model=_raises(error)))
        reference = registry.champion_reference(NAME)
        assert reference.startswith(drift.NO_CHECK) and reference != drift.NO_CHAMPION
        assert validate.DriftReference.named(reference).unavailable == \
            f"the champion of '{NAME}' cannot be looked up: {type(error).__name__}: {error}"
    monkeypatch.setattr(drift, "connect", _raises(store.RegistryError("store down")))
    assert registry.champion_reference(NAME).endswith(
        "cannot be looked up: RegistryError: store down")
    monkeypatch.setattr(drift, "connect", lambda **kw: _client(
        get_registered_model=_raises(TypeError("a bug"))))
    with pytest.raises(TypeError, match="a bug"):
        registry.champion_reference(NAME)


def test_version_stats_a_missing_file_is_an_unavailable_check(tracking_store, tmp_path):
    client = MlflowClient(tracking_store, tracking_store)
    run = client.create_run(client.create_experiment("x"))
    client.create_registered_model(NAME)
    client.create_model_version(NAME, source="file:///nowhere", run_id=run.info.run_id)
    stats, label, why = registry.version_stats(f"models:/{NAME}/1", tmp_path)
    assert stats is None and label == drift.unavailable(why)
    assert why.startswith(f"the statistics of champion version 1 of '{NAME}' "
                          f"({drift.STATS_ARTIFACT} of its run) cannot be read: MlflowException")
    # A version that is gone reads the same.
    gone = registry.version_stats(f"models:/{NAME}/7", tmp_path)[2]
    assert gone.startswith(f"the statistics of champion version 7 of '{NAME}' (")
    assert "MlflowException: " in gone and "not found" in gone


def test_version_stats_a_bug_is_raised(monkeypatch, tmp_path):
    import mlflow

    monkeypatch.setattr(drift, "connect", lambda **kw: _client(
        get_model_version=lambda name, version: types.SimpleNamespace(run_id="r")))
    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", _raises(KeyError("a bug")))
    with pytest.raises(KeyError, match="a bug"):
        registry.version_stats(f"models:/{NAME}/1", tmp_path)


def test_registered_model_missing_is_named_any_other_failure_is_raised():
    client = _client(get_registered_model=_raises(_mlflow_error(RESOURCE_DOES_NOT_EXIST)))
    with pytest.raises(registry.RegistryError, match=f"no registered model named '{NAME}'"):
        history.registered_model(client, NAME)
    client = _client(get_registered_model=_raises(_mlflow_error(TEMPORARILY_UNAVAILABLE)))
    with pytest.raises(MlflowException) as raised:
        history.registered_model(client, NAME)
    assert not isinstance(raised.value, registry.RegistryError)


def test_resolve_a_missing_version_or_alias_is_named_any_other_failure_is_raised(
        tracking_store):
    client = MlflowClient(tracking_store, tracking_store)
    client.create_registered_model(NAME)
    with pytest.raises(registry.RegistryError, match=f"'{NAME}' has no version 4"):
        registry.resolve(client, f"models:/{NAME}/4")
    with pytest.raises(registry.RegistryError, match=f"'{NAME}' has no alias 'champion'"):
        registry.resolve(client, f"models:/{NAME}@champion")
    failing = _client(get_registered_model=lambda name: None,
                      get_model_version=_raises(_mlflow_error(TEMPORARILY_UNAVAILABLE)))
    with pytest.raises(MlflowException, match="said the store") as raised:
        registry.resolve(failing, f"models:/{NAME}/4")
    assert not isinstance(raised.value, registry.RegistryError)


def test_recorded_predictions_unreadable_means_rescore_a_bug_is_raised(monkeypatch):
    import mlflow

    for error in (_mlflow_error(RESOURCE_DOES_NOT_EXIST), OSError("gone"),
                  json.JSONDecodeError("bad", "{", 0)):
        monkeypatch.setattr(mlflow.artifacts, "download_artifacts", _raises(error))
        assert gate.recorded_predictions(_client(), "run", ["a", "b"]) is None
    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", _raises(TypeError("a bug")))
    with pytest.raises(TypeError, match="a bug"):
        gate.recorded_predictions(_client(), "run", ["a", "b"])


def _gate_data() -> pd.DataFrame:
    return pd.DataFrame({"utt_id": ["u1", "u2"], "label": ["a", "b"], "predicted": ["a", "b"],
                         "wav_path": ["1.wav", "2.wav"], "transcript": ["x", "y"],
                         "speaker": ["Ses01F", "Ses01M"], "p_a": [0.9, 0.1],
                         "p_b": [0.1, 0.9]})


def _load_failing(monkeypatch, error: BaseException) -> None:
    import model.pyfunc

    monkeypatch.setattr(model.pyfunc, "load", _raises(error))
    monkeypatch.setattr(gate, "_store_down", lambda: False)


def test_infra_check_a_model_that_does_not_serve_fails_it(monkeypatch):
    for error in (_mlflow_error(RESOURCE_DOES_NOT_EXIST), OSError("files gone"),
                  ModuleNotFoundError("no module named x"), RuntimeError("torch says no")):
        _load_failing(monkeypatch, error)
        result = gate.infra_check("models:/emoalign/2", _gate_data(), ["a", "b"], 2, False)
        assert result == {"ok": False, "error": f"{type(error).__name__}: {error}"}
        promoted, reason = registry.decide(Config(), 0.8, result, None)
        assert not promoted and reason.startswith("infra check failed: ")


def test_infra_check_a_bug_or_an_outage_is_raised(monkeypatch):
    _load_failing(monkeypatch, TypeError("a bug"))
    with pytest.raises(TypeError, match="a bug"):
        gate.infra_check("models:/emoalign/2", _gate_data(), ["a", "b"], 2, False)
    _load_failing(monkeypatch, OSError("S3 down"))
    monkeypatch.setattr(gate, "_store_down", lambda: True)
    with pytest.raises(OSError, match="S3 down"):
        gate.infra_check("models:/emoalign/2", _gate_data(), ["a", "b"], 2, False)


def test_a_champion_that_cannot_be_scored_is_said_and_may_be_replaced(monkeypatch):
    config = Config()
    for error in (_mlflow_error(RESOURCE_DOES_NOT_EXIST), OSError("files gone"),
                  registry.RegistryError("the champion predicts other classes")):
        _load_failing(monkeypatch, error)
        champion, ua = gate.challenge("models:/emoalign/1", "1", _gate_data(), ["a", "b"],
                                      config)
        assert ua is None and champion["error"] == f"{type(error).__name__}: {error}"
        promoted, reason = registry.decide(config, 0.8, {"ok": True}, champion)
        assert promoted and "could not be re-scored" in reason


def test_a_bug_or_an_outage_while_scoring_the_champion_is_raised_not_a_promotion(
        monkeypatch):
    _load_failing(monkeypatch, KeyError("a bug"))
    with pytest.raises(KeyError, match="a bug"):
        gate.challenge("models:/emoalign/1", "1", _gate_data(), ["a", "b"], Config())
    _load_failing(monkeypatch, OSError("S3 down"))
    monkeypatch.setattr(gate, "_store_down", lambda: True)
    with pytest.raises(OSError, match="S3 down"):
        gate.challenge("models:/emoalign/1", "1", _gate_data(), ["a", "b"], Config())
    # A bug in the comparison itself, once the champion was scored, is raised too.
    monkeypatch.setattr(gate, "score_champion", lambda *args: pd.Series([0, 1]).to_numpy())
    monkeypatch.setattr(gate, "paired_bootstrap", _raises(ValueError("a bug")))
    with pytest.raises(ValueError, match="a bug"):
        gate.challenge("models:/emoalign/1", "1", _gate_data(), ["a", "b"], Config())


def test_creating_the_registered_model_twice_goes_on_anything_else_is_raised():
    exists = _client(create_registered_model=_raises(_mlflow_error(RESOURCE_ALREADY_EXISTS)))
    assert registration.ensure_registered_model(exists, NAME) is None
    failing = _client(create_registered_model=_raises(_mlflow_error(INTERNAL_ERROR)))
    with pytest.raises(MlflowException, match="said the store"):
        registration.ensure_registered_model(failing, NAME)


def test_an_experiment_created_at_the_same_moment_is_used_anything_else_is_raised():
    answers = iter([None, types.SimpleNamespace(experiment_id="7")])
    raced = _client(get_experiment_by_name=lambda name: next(answers),
                    create_experiment=_raises(_mlflow_error(RESOURCE_ALREADY_EXISTS)))
    assert store.ensure_experiment(raced, "emoalign") == "7"
    failing = _client(get_experiment_by_name=lambda name: None,
                      create_experiment=_raises(_mlflow_error(INTERNAL_ERROR)))
    with pytest.raises(MlflowException, match="said the store"):
        store.ensure_experiment(failing, "emoalign")


def test_the_outage_probe_no_answer_is_an_outage_a_bug_is_raised(monkeypatch):
    from mlflow.utils import rest_utils

    uri = "http://127.0.0.1:9"
    monkeypatch.setattr(rest_utils, "http_request", _raises(MlflowException("refused")))
    assert store._problem(uri, "/x", "GET", 1, "artifact store", "listing it", "?") == \
        "does not answer (MlflowException)"
    monkeypatch.setattr(rest_utils, "http_request", _raises(TypeError("a bug")))
    with pytest.raises(TypeError, match="a bug"):
        store._problem(uri, "/x", "GET", 1, "artifact store", "listing it", "?")
