"""Alerts: one JSON POST to `notify.webhook` when a pipeline run ends, whether it succeeded
or failed. Who sends it is the pipelines layer's business: the DAG's exit task
(dsl.ExitHandler) on a cluster, the local runner under kfp.local (pipelines/local.py).

Plain functions: `payload` builds the message, `recorded_outcome` reads what the tracking
store holds of a run (all the exit task can learn of the registered version and the
scores, since it sees nothing but the run's final status), and `send` posts it. `send` never
raises: a webhook that cannot be reached costs one line on stderr, never the run.

No credential reaches a payload: a user:password in any URL is dropped, each value the
caller names as a secret is replaced by ***, and nothing of the environment is included.

A webhook URL often carries a token in its path. Given as EMOALIGN_WEBHOOK_URL, it wins over
notify.webhook and stays out of every record: the resolved config, and with it the MLflow
params, the pipeline's parameters and the run folder, hold only `env:EMOALIGN_WEBHOOK_URL`
(that the URL came from the environment), and logs show its scheme, host and port alone.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

PIPELINE = "emoalign"
TIMEOUT_S = 5.0  # per attempt
ATTEMPTS = 2  # one retry at most
RETRY_WAIT_S = 1.0
# scheme://user:password@ or scheme://token@ inside any text.
USERINFO_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/@'\"]+@")
FIELDS = ("pipeline", "pipeline_run", "status", "failed_task", "reason", "error",
          "retrained", "retrain_reason", "model_name", "model_version", "gate_decision",
          "gate_reason", "ua", "wa", "drift_unavailable", "mlflow_run_id", "pipeline_job",
          "reported_by")


WEBHOOK_ENV = "EMOALIGN_WEBHOOK_URL"
# What notify.webhook holds when the URL comes from the environment: that it does, never it.
FROM_ENVIRONMENT = f"env:{WEBHOOK_ENV}"


def webhook_from_environment() -> str:
    return os.environ.get(WEBHOOK_ENV, "").strip()


def webhook_url(setting: str) -> str:
    """Where to POST: EMOALIGN_WEBHOOK_URL when set, else notify.webhook; "" for nowhere
    (also when the config says the URL comes from the environment and this process's
    environment lacks it: on a cluster, the `emoalign-webhook` secret)."""
    if from_environment := webhook_from_environment():
        return from_environment
    return "" if setting == FROM_ENVIRONMENT else setting


def is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def where(url: str) -> str:
    """The webhook as a log line may show it: scheme, host and port (its path and query may
    hold a token)."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or '?'}{port}"


def redacted(text: str, secrets: list[str] | tuple = ()) -> str:
    """`text` without the user information of the URLs in it, and with every one of
    `secrets` replaced by ***."""
    text = USERINFO_RE.sub(r"\1", text)
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def payload(pipeline_run: str | None, status: str, *, secrets: list[str] | tuple = (),
            **facts) -> dict:
    """The message: every key of FIELDS, None where unknown. `status` is the run's final
    state (succeeded, failed, cancelled); `facts` may give failed_task and reason (the
    one-line cause), error (the whole one-line message), retrained and retrain_reason,
    model_name, model_version, gate_decision (promoted / rejected; None when nothing was
    registered) and gate_reason (or why nothing was: UA below the floor), ua, wa,
    drift_unavailable (why the drift check against the champion's data could not be made,
    which keeps the gate from promoting the version; None when it was made or not asked
    for), mlflow_run_id, pipeline_job (the cluster's resource name) and reported_by."""
    unknown = set(facts) - set(FIELDS)
    if unknown:
        raise TypeError(f"payload: unknown fields {sorted(unknown)}")
    body = {key: None for key in FIELDS}
    body.update(facts, pipeline=PIPELINE, pipeline_run=pipeline_run,
                status=str(status).lower())
    for key in ("ua", "wa"):
        if body[key] is not None:
            body[key] = float(body[key])
    return _clean(body, tuple(secrets))


def _clean(value, secrets: tuple):
    if isinstance(value, str):
        return redacted(value, secrets)
    if isinstance(value, dict):
        return {k: _clean(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v, secrets) for v in value]
    return value


def recorded_outcome(client, experiment: str, model_name: str, pipeline_run: str) -> dict:
    """What an MLflow client's store holds of `pipeline_run`: the run its track step logged
    (its id, UA and WA, and why its drift check could not be made, if it could not) and the
    version registered from it (number, gate decision and reason); {} when nothing was
    tracked. Both carry the `pipeline_run` tag."""
    from components.registry.drift import UNAVAILABLE_TAG

    found = client.get_experiment_by_name(experiment)
    if found is None:
        return {}
    runs = [run for run in client.search_runs([found.experiment_id],
                                              f"tags.pipeline_run = {_quoted(pipeline_run)}",
                                              max_results=100)
            if "mlflow.parentRunId" not in run.data.tags]  # not a (fold, seed) member run
    if not runs:
        return {}
    run = runs[0]
    metrics = run.data.metrics
    outcome = {"retrained": True, "mlflow_run_id": run.info.run_id,
               "ua": metrics.get("evaluate/ua"), "wa": metrics.get("evaluate/wa"),
               "drift_unavailable": run.data.tags.get(UNAVAILABLE_TAG)}
    versions = client.search_model_versions(
        f"name={_quoted(model_name)} and tags.pipeline_run = {_quoted(pipeline_run)}")
    if versions:
        version = max(versions, key=lambda v: int(v.version))
        outcome.update(model_version=str(version.version),
                       gate_decision=version.tags.get("gate.decision"),
                       gate_reason=version.tags.get("gate.reason"))
    return outcome


def _quoted(text: str) -> str:
    """`text` as a string literal of MLflow's search filters (which have no escape for a
    quote; neither a run name nor a model name has one)."""
    if "'" in text:
        raise ValueError(f"cannot search MLflow for a name with a quote: {text!r}")
    return f"'{text}'"


def send(url: str, body: dict, timeout_s: float = TIMEOUT_S, attempts: int = ATTEMPTS,
         wait_s: float = RETRY_WAIT_S, log=None) -> bool:
    """POST `body` as JSON to `url`: True when it answered 2xx. A second attempt follows a
    failure that may pass (no answer, a timeout, a 5xx); whatever happens, one line on
    stderr says what did not work, and nothing is raised."""
    data = json.dumps(body).encode()
    problem = "not sent"
    for attempt in range(max(1, min(attempts, ATTEMPTS))):
        if attempt:
            time.sleep(wait_s)
        try:
            request = urllib.request.Request(url, data=data, method="POST", headers={
                "Content-Type": "application/json", "User-Agent": f"{PIPELINE}-notify"})
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                response.read()
            return True
        except urllib.error.HTTPError as e:
            problem = f"HTTP {e.code}"
            if e.code < 500:
                break  # the webhook refuses it: trying again changes nothing
        except Exception as e:  # no answer, a timeout, a broken connection: never the run
            reason = getattr(e, "reason", None) or e
            problem = f"{type(reason).__name__}: {reason}" if not isinstance(reason, str) \
                else reason
    print(f"WARNING: run notification not delivered to {where(url)} "
          f"({' '.join(redacted(str(problem)).split())[:200]}); the run's result is unaffected",
          file=log or sys.stderr)
    return False
