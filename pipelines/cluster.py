"""What each task asks of a Kubeflow cluster: resources, the GPU, secrets, the corpus volume,
retries and caching. kfp.local ignores all of it; the compiled YAML carries it.

Names of the cluster objects default to those infra/k8s creates; override them with
environment variables when compiling for a cluster laid out otherwise.
"""

import os
import sys
from contextlib import contextmanager

from kfp import kubernetes
from kfp.dsl import pipeline_task

# Secrets infra/k8s/secrets.template.yaml describes (never real values in this repository).
MLFLOW_SECRET = os.environ.get("EMOALIGN_MLFLOW_SECRET", "emoalign-mlflow")
S3_SECRET = os.environ.get("EMOALIGN_S3_SECRET", "emoalign-s3")
# The webhook's URL (it may hold a token), read by the exit task as EMOALIGN_WEBHOOK_URL;
# optional: without it the task sends to notify.webhook, or nowhere.
WEBHOOK_SECRET = os.environ.get("EMOALIGN_WEBHOOK_SECRET", "emoalign-webhook")
# The volume holding corpora (IEMOCAP itself, or what the fetch step pulled through DVC).
CORPUS_PVC = os.environ.get("EMOALIGN_CORPUS_PVC", "emoalign-corpus")
CORPUS_MOUNT = "/mnt/corpus"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_NODE_LABEL = (os.environ.get("EMOALIGN_GPU_NODE_LABEL", "nvidia.com/gpu.present"), "true")
# The first wait before a failed network step runs again (then twice as long, twice again).
RETRY_BACKOFF_S = float(os.environ.get("EMOALIGN_RETRY_BACKOFF_S", "10"))

# (cpu request, memory request, memory limit) per task; sized for the full IEMOCAP.
RESOURCES = {
    "fetch": ("1", "2Gi", "4Gi"),
    "check": ("500m", "1Gi", "2Gi"),
    "ingest": ("1", "1Gi", "2Gi"),
    "validate": ("2", "2Gi", "4Gi"),
    "features": ("4", "4Gi", "8Gi"),
    "plan": ("500m", "1Gi", "2Gi"),
    "train": ("4", "16Gi", "32Gi"),  # each (fold, seed) task
    "evaluate": ("2", "4Gi", "8Gi"),
    "summarize": ("1", "4Gi", "8Gi"),
    "track": ("1", "2Gi", "4Gi"),
    "register": ("2", "4Gi", "8Gi"),
    "notify": ("250m", "512Mi", "1Gi"),  # the exit task: a POST, an MLflow search
}
# Steps that talk to services (DVC remote, MLflow, the webhook) retry transient failures.
RETRIED = {"fetch", "check", "track", "register", "notify"}
# Never from the cache: steps with effects outside their outputs (MLflow runs, registered
# versions, the alert), and those whose answer depends on the outside world (a DVC revision
# such as `main` moves; the champion changes).
UNCACHED = {"fetch", "check", "track", "register", "notify"}
# From the cache when their inputs are unchanged. KFP keys a task's cache on its parameters
# and its input artifacts' URIs, not on file contents: ingest and features take the data
# hash, validate the champion it compares with, and the rest the artifacts of those.
CACHED = {"ingest", "validate", "features", "plan", "train", "evaluate", "summarize"}
# The longest a run may take before the cluster stops it (Argo's activeDeadlineSeconds): a
# scheduled run that hangs on a service must not hold its GPUs, or the next schedule, for
# ever. LOSO x 3 seeds on the full IEMOCAP takes a few hours on GPU nodes.
RUN_DEADLINE_S = int(os.environ.get("EMOALIGN_RUN_DEADLINE_S", str(24 * 3600)))
# evaluate reads the .wdseg word timings for the attention-alignment measure.
READS_CORPUS = {"fetch", "ingest", "validate", "features", "evaluate", "register"}
# fetch: the champion, for drift; notify: the run's outcome, for the alert.
USES_MLFLOW = {"fetch", "check", "track", "register", "notify"}
USES_S3 = {"fetch", "track", "register"}


class _CallerNameOnly:
    """Stands in for `inspect` in kfp.dsl.pipeline_task while configure() sets a task's
    resources. kfp's setters call inspect.stack() for one thing, the name of the setter (for
    an error message); the whole stack costs about 65 ms a call in a process that imported
    torch and MLflow (inspect.getmodule scans sys.modules for each frame): 2.5 s a pipeline."""

    @staticmethod
    def stack():
        setter = sys._getframe(2)  # 0: here, 1: kfp's _ensure_container_spec_exists
        return [None, (setter, setter.f_code.co_filename, setter.f_lineno,
                       setter.f_code.co_name)]


@contextmanager
def _setters_without_stack():
    real = pipeline_task.inspect
    pipeline_task.inspect = _CallerNameOnly
    try:
        yield
    finally:
        pipeline_task.inspect = real


def configure(task, step: str):
    """Apply the cluster settings of `step` to `task`; returns the task."""
    with _setters_without_stack():
        return _configure(task, step)


def _configure(task, step: str):
    task.set_display_name(step)
    cpu, memory, memory_limit = RESOURCES[step]
    task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory_limit)
    if step == "train":
        task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(1)
        kubernetes.add_node_selector(task, *GPU_NODE_LABEL)
        kubernetes.add_toleration(task, key=GPU_RESOURCE, operator="Exists",
                                  effect="NoSchedule")
    if step in RETRIED:
        # 10 s, 20 s, 40 s by default: rides out a restarting server or a flaky network,
        # and a dead one fails the run in a few minutes (each attempt's MLflow calls retry
        # 3 times, registry.store.HTTP_RETRIES; kfp.local honours this too).
        task.set_retry(num_retries=3, backoff_duration=f"{RETRY_BACKOFF_S:g}s",
                       backoff_factor=2.0, backoff_max_duration="60s")
    task.set_caching_options(step in CACHED)
    if step in READS_CORPUS:
        kubernetes.mount_pvc(task, pvc_name=CORPUS_PVC, mount_path=CORPUS_MOUNT)
    if step in USES_MLFLOW:
        kubernetes.use_secret_as_env(task, secret_name=MLFLOW_SECRET, secret_key_to_env={
            "tracking_uri": "MLFLOW_TRACKING_URI",
            "username": "MLFLOW_TRACKING_USERNAME",
            "password": "MLFLOW_TRACKING_PASSWORD"}, optional=False)
    if step == "notify":
        kubernetes.use_secret_as_env(task, secret_name=WEBHOOK_SECRET, secret_key_to_env={
            "url": "EMOALIGN_WEBHOOK_URL"}, optional=True)
    if step in USES_S3:
        kubernetes.use_secret_as_env(task, secret_name=S3_SECRET, secret_key_to_env={
            "access_key_id": "AWS_ACCESS_KEY_ID",
            "secret_access_key": "AWS_SECRET_ACCESS_KEY",
            "endpoint_url": "MLFLOW_S3_ENDPOINT_URL"}, optional=False)
    return task
