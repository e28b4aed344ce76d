"""notify.webhook: one JSON POST when a pipeline run ends, succeeded or failed, against a
local HTTP server. The local runner sends it under kfp.local (whose exit task sees no
failed task); the exit task sends it on a cluster, and is called here as KFP would."""

import http.server
import json
import socket
import threading
import types

import pytest
from kfp import dsl

from components import check, notify, registry
from components.config import config_from_yaml, load_config
from components.errors import ConfigError
from components.lineage import Lineage
from conftest import SENTINEL, assert_one_line_error, emoalign
from pipelines import kfp_components, local
from pipelines.local import PipelineFailed


class _Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((self.headers["Content-Type"], json.loads(body)))
        self.send_response(self.server.answer)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    """A webhook on 127.0.0.1: its URL, the (content type, JSON body) of each POST it got,
    and the server (set `.answer` for another status)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    server.received, server.answer = [], 204
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield types.SimpleNamespace(url=f"http://127.0.0.1:{server.server_port}/hook",
                                received=server.received, server=server)
    server.shutdown()
    server.server_close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def bodies(hook) -> list[dict]:
    assert all(kind == "application/json" for kind, _ in hook.received)
    return [body for _, body in hook.received]


def test_a_finished_run_is_reported_with_its_version_gate_and_scores(two_runs, webhook,
                                                                     monkeypatch, capsys):
    """The local runner's POST, from the shared run's recorded summary; and the exit task's
    on a cluster (KFP's final status, the rest read from MLflow), which says the same."""
    summary = two_runs["summaries"][0]
    config = load_config(None, [f"notify.webhook={webhook.url}"])
    sent = local.notify_run(config, summary=summary)
    assert bodies(webhook) == [sent]
    assert set(sent) == set(notify.FIELDS)
    expected = {"pipeline": "emoalign", "pipeline_run": summary["pipeline_run"],
                "status": "succeeded", "failed_task": None, "reason": None,
                "retrained": True, "model_name": "emoalign", "model_version": "1",
                "gate_decision": "promoted", "ua": summary["ua"], "wa": summary["wa"],
                "mlflow_run_id": summary["mlflow_run_id"], "reported_by": "local_runner"}
    assert {k: sent[k] for k in expected} == expected
    assert sent["gate_reason"] == summary["promotion_reason"]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", two_runs["uri"])
    status = dsl.PipelineTaskFinalStatus("SUCCEEDED", "projects/p/pipelineJobs/j",
                                         "exit-handler-1", None, None)
    kfp_components.notify.python_func(status=status, config_yaml=config.to_yaml(),
                                      pipeline_run=summary["pipeline_run"], send=True)
    from_exit_task = bodies(webhook)[1]
    assert from_exit_task["reported_by"] == "exit_task"
    assert from_exit_task["pipeline_job"] == "projects/p/pipelineJobs/j"
    assert from_exit_task["ua"] == pytest.approx(summary["ua"])
    assert from_exit_task["wa"] == pytest.approx(summary["wa"])
    for key in ("pipeline_run", "status", "model_version", "gate_decision", "gate_reason",
                "mlflow_run_id", "retrained", "failed_task"):
        assert from_exit_task[key] == sent[key], key
    assert f"notified {notify.where(webhook.url)}: run succeeded" in capsys.readouterr().out

    # A cluster run that failed: KFP's state and error message, and what MLflow has (here:
    # nothing, no run of that name was tracked).
    status = dsl.PipelineTaskFinalStatus("FAILED", "projects/p/pipelineJobs/k",
                                         "exit-handler-1", 1, "task train failed")
    kfp_components.notify.python_func(status=status, config_yaml=config.to_yaml(),
                                      pipeline_run="emoalign-never-tracked", send=True)
    failed = bodies(webhook)[2]
    assert (failed["status"], failed["reason"], failed["model_version"], failed["ua"]) == \
        ("failed", "task train failed", None, None)
    # Under kfp.local (send=False) and with no webhook, the exit task sends nothing.
    kfp_components.notify.python_func(status=status, config_yaml=config.to_yaml(),
                                      pipeline_run="x", send=False)
    kfp_components.notify.python_func(status=status, config_yaml=load_config().to_yaml(),
                                      pipeline_run="x", send=True)
    assert len(webhook.received) == 3


@pytest.mark.slow  # takes a pipeline through kfp.local: not in `make test-fast`
def test_a_failed_run_is_reported_once_with_the_failed_task_and_its_reason(
        tmp_path, webhook, monkeypatch):
    """A whole run through kfp.local whose fetch fails (retries skipped, as in
    test_pipeline): the exit task runs and leaves the POST to the runner, which sends one."""
    from kfp.local.orchestrator import task_executor

    monkeypatch.setattr(task_executor, "time", types.SimpleNamespace(sleep=lambda s: None))
    config = load_config(None, [f"notify.webhook={webhook.url}"])
    lineage = Lineage(str(tmp_path / "gone"), "x", "", False)
    with pytest.raises(PipelineFailed) as failure:
        local.run_local_pipeline(config, lineage, tmp_path / "runs")
    (body,) = bodies(webhook)
    run_dir = next((tmp_path / "runs" / "pipeline_root").glob("emoalign-*"))
    assert body["status"] == "failed" and body["pipeline_run"] == run_dir.name
    assert body["failed_task"] == "fetch"
    assert body["reason"].startswith("CorpusError: corpus path does not exist")
    assert body["error"] == str(failure.value) and "\n" not in body["error"]
    assert (body["model_version"], body["gate_decision"], body["ua"]) == (None, None, None)
    log = (run_dir / "pipeline.log").read_text()
    assert "Task 'notify' finished with status SUCCESS" in log  # kfp.local ran the exit task
    assert "the local runner sends the notification" in log


def test_nothing_to_retrain_starts_no_pipeline_and_is_reported_as_before(tmp_path, webhook,
                                                                       monkeypatch):
    """`emoalign retrain` asks the check step's question before starting kfp.local. "Nothing
    to retrain" starts no pipeline, leaves a record (the check's decision, the config) and
    sends what a pipeline stopped by its check task sent: succeeded, retrained false, the
    reason. A reason to train runs the pipeline unforced (its check task asks again); a
    forced run does not ask first."""
    nothing = check.Decision(False, check.NOTHING_TO_RETRAIN)
    config = load_config(None, [f"notify.webhook={webhook.url}"])
    seen = Lineage("corpus", "0" * 32 + ".dir", "abc", False)
    monkeypatch.setattr(registry, "connect", lambda *a, **k: None)
    monkeypatch.setattr(check, "run", lambda *a, **k: nothing)
    monkeypatch.setattr(local, "run_pipeline", lambda *a, **k: pytest.fail("pipeline started"))
    run = local.run_local_pipeline(config, seen, tmp_path, force=False)
    assert isinstance(run, local.NotStarted)
    assert run.run_dir.parent == (tmp_path / "pipeline_root").resolve()
    assert (run.run_dir / "check" / "decision").read_text() == nothing.markdown()
    assert config_from_yaml((run.run_dir / local.RESOLVED_CONFIG).read_text()) == config
    summary, lines = local.run_report(run, config, seen)
    assert (summary["retrained"], summary["reason"]) == (False, check.NOTHING_TO_RETRAIN)
    assert lines[-1] == f"{check.NOTHING_TO_RETRAIN}; the pipeline was not started"
    (body,) = bodies(webhook)
    expected = {"status": "succeeded", "pipeline_run": run.run_dir.name, "retrained": False,
                "retrain_reason": check.NOTHING_TO_RETRAIN, "model_version": None,
                "gate_decision": None, "failed_task": None, "reported_by": "local_runner"}
    assert {k: body[k] for k in expected} == expected

    started = []
    ran = local.LocalRun(tmp_path, tmp_path / "pipeline.log", 1.0)
    monkeypatch.setattr(local, "run_pipeline", lambda arguments, *a, **k:
                        started.append(arguments["force"]) or ran)
    monkeypatch.setattr(check, "run", lambda *a, **k: check.Decision(True, "config changed"))
    quiet = load_config()
    assert local.run_local_pipeline(quiet, seen, tmp_path, force=False) is ran
    monkeypatch.setattr(check, "run", lambda *a, **k: pytest.fail("asked when forced"))
    assert local.run_local_pipeline(quiet, seen, tmp_path, force=True) is ran
    assert started == [False, True] and len(webhook.received) == 1


def test_an_unreachable_webhook_is_one_line_and_the_run_goes_on(tmp_path, webhook,
                                                                 monkeypatch, capsys):
    summary = {"retrained": False, "reason": "nothing to retrain", "pipeline_run": "r"}
    url = closed_port_url()
    config = load_config(None, [f"notify.webhook={url}"])

    # The run ends as it would have: the runner's run, then its notification.
    ran = local.LocalRun(tmp_path, tmp_path / "pipeline.log", 1.0)
    monkeypatch.setattr(local, "run_pipeline", lambda *a, **k: ran)
    monkeypatch.setattr(local, "run_summary", lambda *a, **k: summary)
    assert local.run_local_pipeline(config, Lineage("c", "h", "", False), tmp_path) is ran
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"WARNING: run notification not delivered to "
                             f"{notify.where(url)} (")
    assert "the run's result is unaffected" in err[0]

    # A webhook that answers 5xx is tried once more; one that refuses (4xx), once.
    webhook.server.answer = 503
    assert notify.send(webhook.url, {"a": 1}, wait_s=0) is False
    assert len(webhook.received) == 2
    webhook.server.answer = 404
    assert notify.send(webhook.url, {"a": 1}, wait_s=0) is False
    assert len(webhook.received) == 3
    assert [line.split(" (")[1].split(")")[0]
            for line in capsys.readouterr().err.splitlines()] == ["HTTP 503", "HTTP 404"]


def test_a_webhook_that_is_not_http_is_a_one_line_error(tmp_path):
    assert_one_line_error(
        emoalign("run", "--workdir", tmp_path, "--set", "notify.webhook=ftp://x"),
        "notify.webhook must be an http(s) URL, got 'ftp://x'")
    for bad in ("hooks.example.com/x", "http://", "file:///tmp/x", "ftp://u:pw@host/x"):
        with pytest.raises(ConfigError, match="notify.webhook must be an http") as e:
            load_config(None, [f"notify.webhook={bad}"])
        assert "pw" not in str(e.value)
    assert load_config(None, ["notify.webhook=https://hooks.example.com/a?b=c"]).notify.webhook
    assert load_config().notify.webhook == ""
    # The alert is the run's: a (fold, seed) task's config (its cache key) has none.
    config = load_config(None, ["notify.webhook=https://hooks.example.com/a"])
    assert config.for_task(0).notify.webhook == ""


def test_a_webhook_from_the_environment_wins_and_is_recorded_only_as_such(webhook,
                                                                         monkeypatch):
    token_url = webhook.url + "/T0KEN-in-path"
    monkeypatch.setenv("EMOALIGN_WEBHOOK_URL", token_url)
    config = load_config(None, ["notify.webhook=https://hooks.example.com/from-config"])
    assert config.notify.webhook == notify.FROM_ENVIRONMENT == "env:EMOALIGN_WEBHOOK_URL"
    assert "T0KEN" not in config.to_yaml() and "from-config" not in config.to_yaml()
    assert notify.webhook_url(config.notify.webhook) == token_url
    # A logged config read again (a task, an audit) keeps saying so, and still loads.
    assert config_from_yaml(config.to_yaml()).notify.webhook == notify.FROM_ENVIRONMENT
    sent = local.notify_run(config, summary={"pipeline_run": "emoalign-1"})
    assert bodies(webhook) == [sent] and "T0KEN" not in json.dumps(sent)
    # Where the config says the URL comes from the environment and it lacks it: nowhere.
    monkeypatch.delenv("EMOALIGN_WEBHOOK_URL")
    assert notify.webhook_url(config_from_yaml(config.to_yaml()).notify.webhook) == ""
    assert local.notify_run(config_from_yaml(config.to_yaml())) is None
    # Not a URL: one line, without the value (it may hold a token).
    monkeypatch.setenv("EMOALIGN_WEBHOOK_URL", "hooks.example.com/T0KEN")
    with pytest.raises(ConfigError, match="EMOALIGN_WEBHOOK_URL must be an http") as e:
        load_config()
    assert "T0KEN" not in str(e.value)


def test_no_credential_reaches_the_payload(webhook, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SENTINEL)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:pa55word@mlflow:5000")
    config = load_config(None, [f"notify.webhook={webhook.url}"])
    failure = PipelineFailed(
        f"task 'track' failed: RegistryError: MLflow at https://bob:hunter22@mlflow:5000 "
        f"said {SENTINEL} (log: /x)", failed_task="track",
        reason="RegistryError: store https://bob:hunter22@mlflow:5000 refused token "
               f"{SENTINEL}", pipeline_run="emoalign-1")
    sent = local.notify_run(config, failure=failure)
    summary = {"retrained": True, "pipeline_run": "emoalign-2", "ua": 0.5, "wa": 0.5,
               "model_version": "3", "promoted": False,
               "promotion_reason": f"s3://carol:pa55word@bucket/{SENTINEL}"}
    local.notify_run(config, summary=summary)
    assert bodies(webhook)[0] == sent
    text = json.dumps(bodies(webhook))
    for secret in (SENTINEL, "pa55word", "hunter22", "alice", "bob", "carol"):
        assert secret not in text, secret
    assert "https://mlflow:5000" in text and "s3://bucket/***" in text
    assert not {"env", "environment"} & set(sent)
