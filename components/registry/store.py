"""The MLflow store: connecting to it (SQLite under runs/ by default, or a server), and
keeping credentials out of everything written there."""

import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from components import PROJECT_ROOT
from components.errors import UserError

DEFAULT_STORE = PROJECT_ROOT / "runs" / "mlflow.db"
# Environment variables whose values must never reach the tracking store.
SECRET_NAME_RE = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|ACCESS_KEY|API_KEY|CREDENTIAL",
                            re.IGNORECASE)


class RegistryError(UserError):
    """The tracking server or registry cannot do what was asked; the message says why."""


def _has_code(error: BaseException, code: int) -> bool:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import ErrorCode

    return isinstance(error, MlflowException) and error.error_code == ErrorCode.Name(code)


def is_missing(error: BaseException) -> bool:
    """Whether `error` is MLflow's answer that what was asked for does not exist
    (RESOURCE_DOES_NOT_EXIST), and not any other failure of the store."""
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

    return _has_code(error, RESOURCE_DOES_NOT_EXIST)


def exists_already(error: BaseException) -> bool:
    """Whether `error` is MLflow's answer that what was to be created exists
    (RESOURCE_ALREADY_EXISTS), and not any other failure of the store."""
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS

    return _has_code(error, RESOURCE_ALREADY_EXISTS)


def is_refused_alias(error: BaseException) -> bool:
    """Whether `error` is how MLflow answers an alias that is not set (or not a valid alias
    name): INVALID_PARAMETER_VALUE."""
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return _has_code(error, INVALID_PARAMETER_VALUE)


def read_errors() -> tuple[type[BaseException], ...]:
    """What reading the registry or its artifact store raises when it cannot: a store that
    does not answer (RegistryError, from `connect`), MLflow's own errors (a version or file
    that is not there, a server's error answer), the file system's and the network's
    (requests' errors are OSErrors) and S3's (botocore's, where it is installed). A bug
    (TypeError, KeyError, ...) is none of them."""
    from mlflow.exceptions import MlflowException

    errors: tuple[type[BaseException], ...] = (RegistryError, MlflowException, OSError)
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        return errors
    return errors + (BotoCoreError, ClientError)


def one_line(error: BaseException, limit: int = 300) -> str:
    """`error` as `Type: its first line`, credentials scrubbed, at most `limit` characters of
    the message."""
    text = str(error).strip()
    first = scrub(text.splitlines()[0])[:limit] if text else ""
    return type(error).__name__ + (f": {first}" if first else "")


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set, else the SQLite store under runs/ (an absolute path)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_STORE}"


def redact(uri: str) -> str:
    """The URI without user name and password, fit for logs and messages."""
    parts = urlsplit(uri)
    if parts.password is None and parts.username is None:
        return uri
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def _artifact_location(uri: str) -> str | None:
    """Beside a SQLite store, artifacts go to <store folder>/mlartifacts (an absolute path,
    not MLflow's default of ./mlruns under whatever the working directory is)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return None


def connect(uri: str | None = None, timeout_s: float = 10.0,
            consequence: str = "nothing was tracked or registered"):
    """A client for a store that answers, or a RegistryError naming it (and saying what
    that means). `emoalign run` calls it before any work, so a dead server costs nothing."""
    import logging

    import requests
    from mlflow import MlflowClient

    # A new SQLite store announces its table migrations on stderr; nothing a user acts on.
    for noisy in ("mlflow.store.db.utils", "alembic.runtime.migration"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    uri = uri or tracking_uri()
    if uri.startswith(("http://", "https://")):
        _limit_http_retries()
        try:
            response = requests.get(uri.rstrip("/") + "/health", timeout=timeout_s)
            response.raise_for_status()
        except requests.RequestException as e:
            reason = type(e).__name__ if not isinstance(e, requests.HTTPError) else str(e)
            raise RegistryError(f"MLflow tracking server {redact(uri)} is unreachable "
                                f"({reason}); {consequence}") from None
        _probe_backend_store(uri, timeout_s, consequence)
    elif uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RegistryError(f"cannot create the MLflow store folder {path.parent}: "
                                f"{e.strerror} (set MLFLOW_TRACKING_URI to a store you can "
                                "write)") from None
    try:
        with _store_creation_lock(uri):
            # Both stores create and migrate their tables when first opened.
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            client.search_experiments(max_results=1)
            client.search_registered_models(max_results=1)
    except Exception as e:
        # Broad on purpose, and nothing is decided on it: whatever keeps the store from
        # opening (a SQLAlchemy, alembic or HTTP error) stops the caller in one line.
        raise RegistryError(f"MLflow tracking store {redact(uri)} does not answer: "
                            f"{scrub(str(e).splitlines()[0])[:400]}; {consequence}") from None
    # MLflow's module-level functions (models:/ URIs, downloads) must see the same store.
    # (The registry follows the tracking URI; setting it too would export
    # MLFLOW_REGISTRY_URI to every subprocess started later.)
    import mlflow

    mlflow.set_tracking_uri(uri)
    return client


# MLflow's default (7 retries, doubling waits) spends about 4 minutes on each call to a server
# whose database is down, and KFP retries the step 3 times on top. A user's own setting wins.
HTTP_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
                "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def _limit_http_retries() -> None:
    for key, value in HTTP_RETRIES.items():
        os.environ.setdefault(key, value)


def _probe_backend_store(uri: str, timeout_s: float, consequence: str) -> None:
    """One request that reaches the server's database, without retries: a server whose
    /health answers while its backend store (PostgreSQL) is down is named as such."""
    problem = _backend_store_problem(uri, timeout_s)
    if problem:
        raise RegistryError(f"MLflow tracking server {redact(uri)} {problem}; {consequence}")


def _backend_store_problem(uri: str, timeout_s: float = 10.0) -> str | None:
    return _problem(uri, "/api/2.0/mlflow/experiments/search", "POST", timeout_s,
                    "backend store", "on a search", "is its database up?",
                    json={"max_results": 1})


def _artifact_store_problem(uri: str, timeout_s: float = 10.0) -> str | None:
    """The artifact store a tracking server proxies (S3 behind --artifacts-destination)."""
    return _problem(uri, "/api/2.0/mlflow-artifacts/artifacts", "GET", timeout_s,
                    "artifact store", "listing it", "is its S3 endpoint up?",
                    params={"path": ""})


def _problem(uri: str, endpoint: str, method: str, timeout_s: float, store: str, doing: str,
             hint: str, **request) -> str | None:
    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    creds = get_default_host_creds(uri)
    try:
        response = http_request(creds, endpoint, method, max_retries=0, timeout=timeout_s,
                                raise_on_status=False, **request)
    except MlflowException as e:  # http_request's one error: no answer, a timeout, a bad URL
        # A server whose S3 endpoint is down can spend longer than the timeout on its own
        # retries to S3 before it answers 500: slow, not gone, if its /health answers.
        if _answers_health(creds, http_request):
            return (f"answers, but its {store} fails (no answer in {timeout_s:.0f} s "
                    f"{doing}; {hint})")
        return f"does not answer ({type(e).__name__})"
    if response.status_code >= 500:
        return (f"answers, but its {store} fails (HTTP {response.status_code} {doing}; "
                f"{hint})")
    return None


def _answers_health(creds, http_request) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        return http_request(creds, "/health", "GET", max_retries=0, timeout=5,
                            raise_on_status=False).status_code == 200
    except MlflowException:  # no answer (http_request wraps every failure in it)
        return False


def store_outage(uri: str) -> str | None:
    """Why a tracking server cannot serve or store files right now (its artifact store or
    its database is down), or None: an outage, not something wrong with a model."""
    if not uri.startswith(("http://", "https://")):
        return None
    problem = _artifact_store_problem(uri) or _backend_store_problem(uri)
    return f"MLflow tracking server {redact(uri)} {problem}" if problem else None


@contextmanager
def artifact_access(client, what: str, consequence: str):
    """Reading or writing the store's files (`what`): when the server's artifact store (S3)
    or database is down, one RegistryError saying which, instead of MLflow's multi-line
    retry report. Any other failure is raised as it is."""
    try:
        yield
    except UserError:
        raise
    except Exception:  # broad on purpose: re-raised as it is unless the store is down
        outage = store_outage(client.tracking_uri)
        if outage is None:
            raise
        raise RegistryError(f"could not {what}: {outage}; {consequence}") from None


@contextmanager
def _store_creation_lock(uri: str):
    """Two processes opening a new SQLite store at once would both create its tables (and
    one fail on "duplicate column"); they take turns on a lock file beside it."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    with open(Path(uri[len("sqlite:///"):]).with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_experiment(client, name: str) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_location(
            client.tracking_uri))
    except MlflowException as e:
        if not exists_already(e):
            raise
        # Created by a run started at the same moment.
        return client.get_experiment_by_name(name).experiment_id


def secret_values() -> list[str]:
    values = [v for k, v in os.environ.items() if SECRET_NAME_RE.search(k) and len(v) >= 6]
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        password = urlsplit(os.environ.get(key, "")).password
        if password and len(password) >= 4:
            values.append(password)
    return sorted(set(values), key=len, reverse=True)


def scrub(text: str, secrets: list[str] | None = None) -> str:
    """Replace every credential found in the environment by ***."""
    for secret in secret_values() if secrets is None else secrets:
        text = text.replace(secret, "***")
    return text


def scrubbed_copy(paths: list[Path], folder: Path) -> Path:
    """Text artifacts copied through `scrub`; binary files (PNG, Parquet) copied as they are."""
    secrets = secret_values()
    folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        target = folder / path.name
        if path.suffix in (".json", ".yaml", ".yml", ".csv", ".md", ".html", ".txt", ".dvc",
                           ".log"):
            target.write_text(scrub(path.read_text(errors="replace"), secrets))
        else:
            shutil.copyfile(path, target)
    return folder
