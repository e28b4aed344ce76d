"""Send the compiled pipeline to a Kubeflow Pipelines cluster: one run, or a recurring run
(what scheduled retraining is: the pipeline's check step ends it early when the champion
was trained from the same data, model code and model settings)."""

import re
import tempfile
from pathlib import Path

from components.errors import UserError
from pipelines.arguments import pipeline_arguments
from pipelines.cluster import CORPUS_MOUNT

# KFP cron: six fields, seconds first ("0 0 3 * * 1" is Mondays at 03:00).
CRON_FIELD_RE = re.compile(r"^[0-9A-Za-z*?/,\-]+$")


class ClusterError(UserError):
    """The cluster cannot be reached or refused the request; says which."""


def check_cron(cron: str) -> str:
    fields = cron.split()
    if len(fields) != 6 or not all(CRON_FIELD_RE.match(f) for f in fields):
        raise UserError(f"--cron {cron!r}: KFP needs six fields, seconds first, "
                        "e.g. '0 0 3 * * 1' for Mondays at 03:00")
    return cron


def arguments(config, corpus: str | None, dvc_repo: str, dvc_rev: str, force: bool) -> dict:
    """Pipeline parameters for a cluster run. The commit comes from the image (baked in at
    build time), the data hash from the fetch step."""
    if dvc_rev and not dvc_repo:
        raise UserError("--dvc-rev needs --dvc-repo")
    corpus = corpus or (f"{CORPUS_MOUNT}/dvc" if dvc_repo else
                        f"{CORPUS_MOUNT}/IEMOCAP_full_release")
    return pipeline_arguments(config, corpus, dvc_repo=dvc_repo, dvc_rev=dvc_rev, force=force)


def _client(host: str):
    import warnings

    import kfp

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "needs KFP >= 2.0.0-beta.2"
            return kfp.Client(host=host)
    except Exception as e:
        raise ClusterError(f"cannot reach Kubeflow Pipelines at {host} "
                           f"({type(e).__name__}); nothing was submitted") from None


def compile_pipeline(out: Path, parallelism: int = 0) -> Path:
    """The pipeline as KFP IR YAML at `out`, running at most `parallelism` (fold, seed)
    tasks at once (0: no limit)."""
    from kfp import compiler

    from pipelines.pipeline import build_pipeline

    if not out.parent.is_dir():
        raise UserError(f"cannot write {out}: folder {out.parent} does not exist")
    try:
        compiler.Compiler().compile(build_pipeline(parallelism), str(out))
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror}") from None
    return out


def _compiled(folder: Path, params: dict) -> str:
    from components.config import config_from_yaml

    parallelism = config_from_yaml(params["config_yaml"]).train.parallelism or 0
    return str(compile_pipeline(folder / "emoalign_pipeline.yaml", parallelism))


def _call(host: str, what: str, fn):
    try:
        return fn()
    except UserError:
        raise
    except Exception as e:
        raise ClusterError(f"Kubeflow Pipelines at {host} did not accept the {what}: "
                           f"{type(e).__name__}: {str(e).splitlines()[0][:200]}") from None


def submit(host: str, params: dict, experiment: str, run_name: str | None) -> str:
    client = _client(host)
    with tempfile.TemporaryDirectory() as scratch:
        package = _compiled(Path(scratch), params)
        result = _call(host, "run", lambda: client.create_run_from_pipeline_package(
            package, arguments=params, run_name=run_name, experiment_name=experiment))
    return result.run_id


def schedule(host: str, params: dict, experiment: str, name: str, cron: str) -> str:
    check_cron(cron)
    client = _client(host)
    with tempfile.TemporaryDirectory() as scratch:
        package = _compiled(Path(scratch), params)

        def create():
            experiment_id = client.create_experiment(experiment).experiment_id
            return client.create_recurring_run(
                experiment_id=experiment_id, job_name=name, cron_expression=cron,
                pipeline_package_path=package, params=params,
                max_concurrency=1,  # at most one retraining at a time
                no_catchup=True,    # a cluster that was down does not replay missed runs
                enabled=True)

        recurring = _call(host, "recurring run", create)
    return recurring.recurring_run_id
