"""Who moved which alias when, and why: MLflow keeps no record of alias moves, so every move
(by the gate, by hand, a rollback) is appended to a history kept as tags on the registered
model itself, readable by anyone who can read the registry. Also the lock that lets one gate
at a time move `champion`, and model URIs."""

import getpass
import json
import os
import re
import socket
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone

import numpy as np

from components.registry.store import (RegistryError, connect, is_missing, is_refused_alias,
                                       redact, scrub)

CHAMPION, CHALLENGER = "champion", "challenger"
HISTORY_PREFIX = "history."
LOCK_TAG = "emoalign.gate_lock"
LOCK_LEASE_S = 900  # a gate holding the lock longer than this has died


def who() -> str:
    try:
        return os.environ.get("EMOALIGN_USER") or getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return f"uid {os.getuid()}"


def append_history(client, name: str, entry: dict) -> dict:
    entry = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), **entry}
    # Nanoseconds plus a random suffix: two writers never pick the same key.
    key = f"{HISTORY_PREFIX}{time.time_ns():020d}.{uuid.uuid4().hex[:6]}"
    client.set_registered_model_tag(name, key, scrub(json.dumps(entry, sort_keys=True)))
    return entry


def read_history(client, name: str) -> list[dict]:
    model = registered_model(client, name)
    return [json.loads(v) for k, v in sorted(model.tags.items()) if k.startswith(HISTORY_PREFIX)]


def registered_model(client, name: str):
    """The registered model `name`, or a RegistryError when it does not exist; any other
    failure to read it is raised as it is."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as e:
        if not is_missing(e):
            raise
        raise RegistryError(f"no registered model named {name!r} in "
                            f"{redact(client.tracking_uri)}") from None


def alias_version(client, name: str, alias: str) -> str | None:
    version = registered_model(client, name).aliases.get(alias)
    return None if version is None else str(version)


def move_alias(client, name: str, alias: str, version: str, action: str, reason: str,
               numbers: dict | None = None, actor: str | None = None) -> dict:
    """Point `alias` at `version` and record the move."""
    before = alias_version(client, name, alias)
    client.set_registered_model_alias(name, alias, version)
    return append_history(client, name, {
        "action": action, "alias": alias, "from": before, "to": str(version),
        "who": actor or who(), "reason": reason, "numbers": numbers or {}})


@contextmanager
def gate_lock(client, name: str, timeout_s: float = 1200.0):
    """One gate at a time per registered model, also across machines: a lease written as a
    tag, then read back after a pause; whoever reads their own lease holds the lock."""
    me = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + timeout_s
    while True:
        holder = registered_model(client, name).tags.get(LOCK_TAG)
        if holder is None or time.time() - float(holder.rsplit("|", 1)[1]) > LOCK_LEASE_S:
            client.set_registered_model_tag(name, LOCK_TAG, f"{me}|{time.time()}")
            time.sleep(0.5)
            if registered_model(client, name).tags.get(LOCK_TAG, "").startswith(me + "|"):
                break
        if time.monotonic() > deadline:
            raise RegistryError(f"registered model {name!r} stayed locked by {holder} for "
                                f"{timeout_s:.0f} s")
        time.sleep(0.3 + 0.4 * np.random.default_rng().random())
    try:
        yield
    finally:
        if registered_model(client, name).tags.get(LOCK_TAG, "").startswith(me + "|"):
            client.delete_registered_model_tag(name, LOCK_TAG)


MODEL_URI_RE = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")


def resolve(client, uri: str):
    """models:/NAME/VERSION or models:/NAME@ALIAS -> the ModelVersion, or a one-line error."""
    from mlflow.exceptions import MlflowException

    m = MODEL_URI_RE.match(uri.strip())
    if not m:
        raise RegistryError(f"{uri!r} is not a model URI; use models:/NAME/VERSION or "
                            "models:/NAME@ALIAS")
    name = m["name"]
    registered_model(client, name)
    try:
        if m["alias"]:
            return client.get_model_version_by_alias(name, m["alias"])
        return client.get_model_version(name, m["version"])
    except MlflowException as e:
        if not (is_missing(e) or (m["alias"] and is_refused_alias(e))):
            raise  # the store failed: not an answer about the version
        what = f"alias {m['alias']!r}" if m["alias"] else f"version {m['version']}"
        raise RegistryError(f"registered model {name!r} has no {what}") from None


def promote(name: str, version: str, reason: str) -> dict:
    client = connect()
    resolve(client, f"models:/{name}/{version}")
    with gate_lock(client, name):
        return move_alias(client, name, CHAMPION, str(version), "manual", reason)


def rollback(name: str, reason: str) -> dict:
    """Champion back to the version it replaced last."""
    client = connect()
    with gate_lock(client, name):
        current = alias_version(client, name, CHAMPION)
        moves = [e for e in read_history(client, name)
                 if e["alias"] == CHAMPION and e["to"] == current and e["from"]]
        if current is None or not moves:
            raise RegistryError(f"registered model {name!r} has no earlier champion to roll "
                                "back to")
        return move_alias(client, name, CHAMPION, moves[-1]["from"], "rollback", reason)
