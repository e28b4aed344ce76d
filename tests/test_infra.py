"""Static checks of infra/: the Dockerfiles, the Kubernetes manifests, the secrets template,
and that they agree with the committed compiled pipeline and pipelines/cluster.py. No
Docker, no cluster, no network: nothing here builds an image or applies a manifest."""

import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from components import environment
from conftest import emoalign
from pipelines import cluster, kfp_components

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
TEMPLATE = K8S / "secrets.template.yaml"
COMPILED = ROOT / "pipelines" / "emoalign_pipeline.yaml"
DOCKERFILES = [INFRA / "Dockerfile", INFRA / "Dockerfile.cuda"]
WORKLOADS = {"Deployment", "StatefulSet", "Job", "DaemonSet", "ReplicaSet", "CronJob", "Pod"}
PLACEHOLDER = "CHANGE_ME"
SECRET_KEYS = {"password", "secret_access_key", "POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD",
               "backend_store_uri"}
PROJECT_IMAGE = f"emoalign:{kfp_components.PROJECT_VERSION}"


# ---- helpers ----------------------------------------------------------------------------

def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kustomization_dirs() -> list[Path]:
    return sorted(p.parent for p in K8S.rglob("kustomization.yaml"))


def manifests() -> list[tuple[Path, dict]]:
    """Every object the kustomizations apply."""
    out = []
    for folder in kustomization_dirs():
        for name in load_docs(folder / "kustomization.yaml")[0]["resources"]:
            path = folder / name
            if path.is_file():
                out += [(path, doc) for doc in load_docs(path)]
    return out


def objects(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for _, d in manifests() if d["kind"] == kind}


def pod_spec(obj: dict) -> dict:
    spec = obj["spec"]
    if obj["kind"] == "Pod":
        return spec
    if obj["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]


def pod_labels(obj: dict) -> dict:
    if obj["kind"] == "Pod":
        return obj["metadata"].get("labels", {})
    spec = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
    return spec["template"]["metadata"].get("labels", {})


def workloads() -> list[tuple[str, dict]]:
    return [(f"{path.name}:{d['kind']}/{d['metadata']['name']}", d)
            for path, d in manifests() if d["kind"] in WORKLOADS]


def all_containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec["containers"]


def template_secrets() -> list[dict]:
    return load_docs(TEMPLATE)


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, f"{path.name}: a line continuation runs off the end of the file"
    return out


def documented_tag(path: Path) -> str:
    """The `-t IMAGE` of the `docker build` command in the Dockerfile's header comment."""
    header = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    found = re.findall(r"docker build\b[^\n]*?-t\s+(\S+)", header)
    assert len(found) == 1, f"{path.name}: document exactly one `docker build ... -t IMAGE`"
    return found[0]


def compiled_docs() -> tuple[dict, dict]:
    docs = load_docs(COMPILED)
    assert len(docs) == 2, "the compiled pipeline should hold the IR and the platform spec"
    return docs[0], docs[1]


def executor_of_step(ir: dict) -> dict[str, str]:
    """step name (the task's display name, as cluster.configure sets it) -> executor label,
    through every DAG, nested ones (dsl.If / ParallelFor) included."""
    components = ir["components"]
    found = {}

    def walk(dag: dict):
        for task in dag.get("tasks", {}).values():
            component = components[task["componentRef"]["name"]]
            if "dag" in component:
                walk(component["dag"])
            else:
                found[task["taskInfo"]["name"]] = component["executorLabel"]

    walk(ir["root"]["dag"])
    return found


def platform_executors() -> dict[str, dict]:
    return compiled_docs()[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def secret_names(executor: dict) -> set[str]:
    return {s.get("secretName") or s["secretNameParameter"]["runtimeValue"]["constant"]
            for s in executor.get("secretAsEnv", [])}


# ---- manifests --------------------------------------------------------------------------

def test_every_manifest_parses_and_names_its_kind():
    paths = sorted(K8S.rglob("*.yaml"))
    assert TEMPLATE in paths and K8S / "kustomization.yaml" in paths
    for path in paths:
        docs = load_docs(path)
        assert docs, f"{path.relative_to(ROOT)} is empty"
        for doc in docs:
            assert isinstance(doc, dict) and doc.get("apiVersion") and doc.get("kind"), \
                f"{path.relative_to(ROOT)}: a document without apiVersion/kind"


def test_every_manifest_matches_the_kubernetes_api_schema():
    """Round trip through the Kubernetes client's models (kfp depends on that client): a
    misspelled or misplaced field is dropped on the way and shows up as a difference."""
    kubernetes = pytest.importorskip("kubernetes")
    api = kubernetes.client.ApiClient()

    class Response:
        def __init__(self, obj):
            self.data = json.dumps(obj)

    def without_nulls(x):
        if isinstance(x, dict):
            return {k: without_nulls(v) for k, v in x.items() if v is not None}
        return [without_nulls(v) for v in x] if isinstance(x, list) else x

    checked = 0
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in load_docs(path):
            model = f"{doc['apiVersion'].split('/')[-1].capitalize()}{doc['kind']}"
            back = api.sanitize_for_serialization(api.deserialize(Response(doc), model))
            assert without_nulls(back) == without_nulls(doc), \
                f"{path.relative_to(ROOT)}: {doc['kind']}/{doc['metadata']['name']} has " \
                "fields the Kubernetes API does not know"
            checked += 1
    assert checked >= 15


def test_kustomizations_list_exactly_the_files_beside_them():
    base = load_docs(K8S / "kustomization.yaml")[0]
    assert base["namespace"] == "emoalign"
    for folder in kustomization_dirs():
        listed = load_docs(folder / "kustomization.yaml")[0]["resources"]
        for name in listed:
            assert (folder / name).is_file(), f"{folder.relative_to(ROOT)}: {name} is missing"
        present = {p.name for p in folder.glob("*.yaml")} - {"kustomization.yaml"}
        unlisted = present - set(listed) - {TEMPLATE.name}
        assert not unlisted, f"{folder.relative_to(ROOT)}: not in kustomization: {unlisted}"
    assert TEMPLATE.name not in base["resources"], "the secrets template must not be applied"


def test_the_services_the_pipeline_needs_are_there():
    assert "emoalign" in objects("Namespace")
    assert {"postgres", "minio", "mlflow"} <= set(objects("Service"))
    ports = {name: {p["port"] for p in s["spec"]["ports"]} for name, s in
             objects("Service").items()}
    assert ports["postgres"] == {5432} and 9000 in ports["minio"] and ports["mlflow"] == {5000}
    postgres = objects("StatefulSet")["postgres"]
    assert postgres["spec"]["replicas"] == 1
    assert postgres["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"][
        "storage"] == "10Gi"
    [container] = pod_spec(postgres)["containers"]
    env = {e["name"]: e for e in container["env"]}
    for key in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"):
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "emoalign-postgres", "key": key}
    mount = container["volumeMounts"][0]["mountPath"]
    assert env["PGDATA"]["value"].startswith(mount + "/"), "PGDATA must be a subdirectory"
    assert "pg_isready" in " ".join(container["readinessProbe"]["exec"]["command"])
    job = objects("Job")["minio-buckets"]
    script = " ".join(pod_spec(job)["containers"][0]["command"])
    assert re.search(r"mb\b[^\n]*/mlflow\b", script) and re.search(r"mb\b[^\n]*/dvc\b", script)


def test_every_pod_runs_unprivileged_with_requests_and_limits():
    assert {name.split("/")[-1] for name, _ in workloads()} >= {
        "postgres", "minio", "minio-buckets", "mlflow"}
    for name, obj in workloads():
        spec = pod_spec(obj)
        assert pod_labels(obj).get("app"), f"{name}: pods need an `app` label"
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, f"{name}: runAsNonRoot"
        assert isinstance(pod.get("runAsUser"), int) and pod["runAsUser"] > 0, \
            f"{name}: a numeric non-root runAsUser"
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{name}: seccomp"
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), name
        for c in all_containers(spec):
            where = f"{name} container {c['name']}"
            sc = c.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, f"{where}: privilege escalation"
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: drop ALL"
            assert not sc.get("privileged") and not sc.get("capabilities", {}).get("add"), where
            if "runAsUser" in sc:
                assert sc["runAsUser"] > 0, where
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(part, {})), f"{where}: {part}"


def test_project_image_runs_as_its_own_user():
    for name, obj in workloads():
        for c in all_containers(pod_spec(obj)):
            if c["image"].split("/")[-1].startswith("emoalign:"):
                assert pod_spec(obj)["securityContext"]["runAsUser"] == 10001, name


def test_images_are_pinned():
    for name, obj in workloads():
        for c in all_containers(pod_spec(obj)):
            image = c["image"]
            last = image.split("/")[-1]
            assert ":" in last or "@sha256:" in image, f"{name}: {image} has no tag"
            tag = last.split("@")[0].partition(":")[2]
            assert tag and tag != "latest" and re.search(r"\d", tag), \
                f"{name}: {image} is not pinned to a version"


def test_mlflow_server_runs_the_project_image_with_its_stores():
    mlflow = objects("Deployment")["mlflow"]
    [container] = pod_spec(mlflow)["containers"]
    assert container["image"] == PROJECT_IMAGE
    assert container["command"] == ["mlflow", "server"]
    args = container["args"]
    opts = {a: args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else True
            for i, a in enumerate(args) if a.startswith("--")}
    assert opts["--port"] == "5000" and opts["--host"] == "0.0.0.0"
    assert opts["--backend-store-uri"] == "$(MLFLOW_BACKEND_STORE_URI)"
    assert opts["--artifacts-destination"] == "s3://mlflow" and opts["--serve-artifacts"] is True
    hosts = opts["--allowed-hosts"].split(",")
    # MLflow matches the Host header literally: clients send `name` or `name:port`.
    for name in ("mlflow", "mlflow.emoalign", "mlflow.emoalign.svc.cluster.local"):
        assert name in hosts and f"{name}:5000" in hosts, f"--allowed-hosts lacks {name}"
    assert "localhost:5000" in hosts
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"] == {
        "name": "emoalign-mlflow-server", "key": "backend_store_uri"}
    for var, key in (("AWS_ACCESS_KEY_ID", "access_key_id"),
                     ("AWS_SECRET_ACCESS_KEY", "secret_access_key"),
                     ("MLFLOW_S3_ENDPOINT_URL", "endpoint_url")):
        assert env[var]["valueFrom"]["secretKeyRef"] == {"name": cluster.S3_SECRET, "key": key}
    assert env["MLFLOW_DISABLE_TELEMETRY"]["value"] == "true"
    # The image's malloc settings are for training; the server keeps glibc's defaults.
    assert env["GLIBC_TUNABLES"]["value"] == ""
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
        assert container[probe]["httpGet"]["port"] in (5000, "http")
    # The tracking URI the pipeline is given names this service on this port.
    [uri] = [s["stringData"]["tracking_uri"] for s in template_secrets()
             if s["metadata"]["name"] == cluster.MLFLOW_SECRET]
    host, _, port = uri.removeprefix("http://").partition(":")
    assert host in hosts and f"{host}:{port}" in hosts and port == "5000"


def test_network_policies_deny_by_default_and_admit_only_whom_they_should():
    policies = objects("NetworkPolicy")
    deny = [p for p in policies.values()
            if p["spec"]["podSelector"] == {} and "Ingress" in p["spec"]["policyTypes"]
            and not p["spec"].get("ingress")]
    assert deny, "no default-deny ingress policy"

    def sources(app: str) -> list[dict]:
        found = [p for p in policies.values()
                 if p["spec"]["podSelector"].get("matchLabels") == {"app": app}]
        assert found, f"no NetworkPolicy selects app={app}"
        return [peer for p in found for rule in p["spec"].get("ingress", [])
                for peer in rule.get("from", [])]

    pipelines_ns = {"namespaceSelector": {"matchLabels": {"emoalign.io/pipelines": "true"}}}
    assert sources("postgres") == [{"podSelector": {"matchLabels": {"app": "mlflow"}}}]
    minio = sources("minio")
    assert {"podSelector": {"matchLabels": {"app": "mlflow"}}} in minio
    assert {"podSelector": {"matchLabels": {"app": "minio-buckets"}}} in minio
    assert pipelines_ns in minio
    assert all("namespaceSelector" not in peer or peer == pipelines_ns for peer in minio)
    mlflow = sources("mlflow")
    assert pipelines_ns in mlflow
    assert all(peer in (pipelines_ns, {"podSelector": {}}) for peer in mlflow)
    # Every pod a policy admits by label exists with that label.
    labels = {pod_labels(obj).get("app") for _, obj in workloads()}
    assert {"mlflow", "minio-buckets", "postgres", "minio"} <= labels


# ---- secrets ----------------------------------------------------------------------------

def test_secrets_template_holds_only_placeholders():
    for secret in template_secrets():
        assert secret["kind"] == "Secret" and "data" not in secret, \
            "use stringData with placeholders, never base64 data"
        for key, value in secret["stringData"].items():
            where = f"{secret['metadata']['name']}.{key}"
            value = str(value)
            if key in SECRET_KEYS or "password" in key.lower() or "secret" in key.lower():
                assert PLACEHOLDER in value, f"{where} must be a {PLACEHOLDER} placeholder"
                if key != "backend_store_uri":
                    assert value == PLACEHOLDER, f"{where}: placeholder only"
            else:
                # Non-secrets only: names, or URLs without credentials in them.
                assert (PLACEHOLDER in value or re.fullmatch(r"[a-z][a-z0-9-]*", value)
                        or re.fullmatch(r"https?://[^@\s]+", value)), f"{where}: {value!r}"


def test_secrets_template_provides_what_the_manifests_and_the_pipeline_mount():
    by_ns: dict[str, dict[str, set]] = {}
    for s in template_secrets():
        ns = s["metadata"]["namespace"]
        by_ns.setdefault(ns, {})[s["metadata"]["name"]] = set(s["stringData"])
    # The services in `emoalign` read their secrets from `emoalign`.
    for name, obj in workloads():
        for c in all_containers(pod_spec(obj)):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in by_ns["emoalign"].get(ref["name"], set()), \
                        f"{name}: secret {ref['name']}/{ref['key']} not in the template"
    # The pipeline's pods read theirs in the profile namespace: another namespace.
    profiles = set(by_ns) - {"emoalign"}
    assert profiles, "the template should show the secrets of the profile namespace"
    [profile] = profiles
    assert profile == load_docs(K8S / "profile" / "kustomization.yaml")[0]["namespace"]
    mounted: dict[str, set] = {}
    for executor in platform_executors().values():
        for s in executor.get("secretAsEnv", []):
            name = s.get("secretName") or s["secretNameParameter"]["runtimeValue"]["constant"]
            mounted.setdefault(name, set()).update(k["secretKey"] for k in s["keyToEnv"])
    assert set(mounted) == {cluster.MLFLOW_SECRET, cluster.S3_SECRET, cluster.WEBHOOK_SECRET}
    for name, keys in mounted.items():
        assert keys <= by_ns[profile].get(name, set()), \
            f"{name} in {profile} lacks {keys - by_ns[profile].get(name, set())}"
    # Both copies of the S3 secret describe the same store.
    assert by_ns["emoalign"][cluster.S3_SECRET] == by_ns[profile][cluster.S3_SECRET]


def test_template_urls_name_the_services_of_the_manifests():
    values = {(s["metadata"]["name"], k): v for s in template_secrets()
              for k, v in s["stringData"].items()}
    services = objects("Service")
    for (name, key), value in values.items():
        m = re.match(r"[a-z0-9+]+://(?:[^@/]*@)?([a-z0-9-]+)(?:\.emoalign[.a-z]*)?:(\d+)",
                     str(value))
        if m:
            service, port = m.group(1), int(m.group(2))
            assert service in services, f"{name}.{key} names no service: {value}"
            assert port in {p["port"] for p in services[service]["spec"]["ports"]}, value
    pg = {k: v for (n, k), v in values.items() if n == "emoalign-postgres"}
    uri = values[("emoalign-mlflow-server", "backend_store_uri")]
    assert uri.startswith(f"postgresql+psycopg2://{pg['POSTGRES_USER']}:")
    assert uri.endswith(f"/{pg['POSTGRES_DB']}")


# ---- the corpus volume ------------------------------------------------------------------

def test_corpus_volume_is_the_one_the_pipeline_mounts():
    pvcs = {d["metadata"]["name"]: (path, d) for path, d in manifests()
            if d["kind"] == "PersistentVolumeClaim"}
    path, pvc = pvcs[cluster.CORPUS_PVC]
    assert path.parent == K8S / "profile", "the corpus PVC must live in the profile namespace"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "100Gi"
    ir, _ = compiled_docs()
    executors = platform_executors()
    for step, label in executor_of_step(ir).items():
        mounts = executors.get(label, {}).get("pvcMount", [])
        if step in cluster.READS_CORPUS:
            assert [(m.get("constant") or m["pvcNameParameter"]["runtimeValue"]["constant"],
                     m["mountPath"]) for m in mounts] == [(cluster.CORPUS_PVC,
                                                           cluster.CORPUS_MOUNT)], step
        else:
            assert not mounts, f"{step} mounts the corpus but cluster.py says it does not"


# ---- Dockerfiles ------------------------------------------------------------------------

@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_pinned_non_root_and_copies_what_exists(dockerfile):
    steps_ = dockerfile_instructions(dockerfile)
    words = [w for w, _ in steps_]
    base = [args for w, args in steps_ if w == "FROM"][0]
    name, _, tag = base.split()[0].partition(":")
    assert name == "python" and re.fullmatch(r"\d+\.\d+\.\d+-slim-\w+", tag), \
        f"base {base!r} must be pinned to a full version"
    pip = [i for i, (w, args) in enumerate(steps_) if w == "RUN" and "pip install" in args]
    users = [i for i, w in enumerate(words) if w == "USER"]
    assert pip and users and users[-1] > pip[-1], "USER must come after the last pip install"
    assert steps_[users[-1]][1] == "10001"
    assert any(w == "RUN" and "--uid 10001" in args for w, args in steps_)
    assert steps_[-1] == ("ENTRYPOINT", '["emoalign"]')
    # The image's lock: what runs the pipeline, no test or bench packages.
    assert any("-r requirements-runtime.lock" in args for w, args in steps_ if w == "RUN")
    # The commit, baked in: there is no .git in the image.
    assert ("ARG", 'GIT_SHA=""') in steps_ and ("ARG", "GIT_DIRTY=false") in steps_
    envs = " ".join(args for w, args in steps_ if w == "ENV")
    assert "EMOALIGN_GIT_SHA=$GIT_SHA" in envs and "EMOALIGN_GIT_DIRTY=$GIT_DIRTY" in envs
    # glibc's malloc for training, set before any process of the image starts, after the
    # last RUN (the build's own processes keep glibc's defaults).
    tunables = ":".join(f"{k}={v}" for k, v in environment.TRAINING_TUNABLES.items())
    [setting] = [i for i, (w, args) in enumerate(steps_)
                 if w == "ENV" and args.startswith("GLIBC_TUNABLES=")]
    assert steps_[setting][1] == f"GLIBC_TUNABLES={tunables}"
    assert setting > max(i for i, (w, _) in enumerate(steps_) if w == "RUN")
    assert "--build-arg GIT_SHA=$(git rev-parse HEAD)" in dockerfile.read_text()
    # Everything COPY'd exists and is not hidden from the build context by .dockerignore.
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for w, args in steps_:
        if w not in ("COPY", "ADD"):
            continue
        sources = [a for a in shlex.split(args) if not a.startswith("--")][:-1]
        assert sources, args
        for src in sources:
            assert (ROOT / src).exists(), f"{dockerfile.name}: COPY {src}: no such file"
            assert not any(fnmatch.fnmatch(src, pat) or src.split("/")[0] == pat
                           for pat in ignored), f"{dockerfile.name}: {src} is .dockerignored"


def test_cuda_image_declares_the_nvidia_runtime_and_checks_torch():
    steps_ = dockerfile_instructions(INFRA / "Dockerfile.cuda")
    envs = " ".join(args for w, args in steps_ if w == "ENV")
    assert "NVIDIA_VISIBLE_DEVICES=all" in envs
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in envs
    assert any(w == "RUN" and "torch.version.cuda" in args for w, args in steps_)
    # Same base and same install as the CPU image: only the runtime settings differ.
    cpu = dockerfile_instructions(INFRA / "Dockerfile")
    assert [a for w, a in steps_ if w == "FROM"] == [a for w, a in cpu if w == "FROM"]
    assert [(w, a) for w, a in steps_ if w in ("COPY", "USER", "ENTRYPOINT")] == \
        [(w, a) for w, a in cpu if w in ("COPY", "USER", "ENTRYPOINT")]
    # Every stage before the last is the CPU image's, step for step: the two images share
    # every dependency layer (the layer cache is keyed on the steps), 7 GB built and stored once.
    def up_to_the_last_stage(steps):
        last = max(i for i, (w, _) in enumerate(steps) if w == "FROM")
        return steps[:last + 1]

    assert up_to_the_last_stage(steps_) == up_to_the_last_stage(cpu)
    lock = (INFRA / "requirements-runtime.lock").read_text()
    assert re.search(r"^nvidia-cuda-runtime-cu12==", lock, re.M), \
        "the image's lock no longer brings the CUDA runtime: the cuda image needs a new base"


def _image_tool():
    sys.path.insert(0, str(INFRA))
    try:
        import image
    finally:
        sys.path.remove(str(INFRA))
    return image


LARGE = re.compile(r"nvidia-.*|torch|torchaudio|triton")  # a hundred MB or more each


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_stages_put_the_large_packages_in_layers_of_their_own(dockerfile):
    """The build's peak disk is the image plus about twice its largest layer (infra/image.py
    builds one stage at a time): each large pin of the lock must be installed by a
    pip-layer.sh stage of its own group, and the stages must chain, each FROM the one before,
    so that the image is built on all of them."""
    image = _image_tool()
    stages = image.dockerfile_stages(dockerfile)
    assert image.dockerfile_base(dockerfile) == stages[0][0]
    names = [name for _, name in stages]
    assert names[-1] is None and None not in names[:-1]
    assert [parent for parent, _ in stages[1:]] == names[:-1], "each stage is FROM the last"
    steps_ = dockerfile_instructions(dockerfile)
    assert ("LABEL", image.BUILD_LABEL) in steps_, "infra/image.py finds leftovers by it"
    assert steps_.index(("LABEL", image.BUILD_LABEL)) == 1, "the first stage's, inherited"
    lock = sorted(_pins(INFRA / "requirements-runtime.lock"))
    installed: dict[str, str] = {}
    stage = None
    for word, args in steps_:
        if word == "FROM":
            stage = args.split()[-1]
        elif word == "RUN" and "pip-layer.sh" in args:
            [pattern] = re.findall(r"pip-layer\.sh '([^']+)'$", args)
            matched = [pin for pin in lock if re.fullmatch(f"({pattern})", pin)]
            assert matched, f"stage {stage}: '{pattern}' matches no pin of the lock"
            for pin in matched:
                installed.setdefault(pin, stage)
    large = [pin for pin in lock if LARGE.fullmatch(pin)]
    assert large and all(pin in installed for pin in large), \
        f"left to the dependencies layer: {[p for p in large if p not in installed]}"
    assert not set(installed) - set(large), "only the large packages have layers of their own"
    # The whole lock after them, in its own stage, before the project's code.
    whole = [i for i, (w, a) in enumerate(steps_)
             if w == "RUN" and "-r requirements-runtime.lock" in a]
    copies = [i for i, (w, a) in enumerate(steps_) if w == "COPY" and "components" in a]
    assert len(whole) == 1 and whole[0] < copies[0]


def test_pip_layer_installs_only_the_matched_pins_without_their_dependencies(tmp_path):
    (tmp_path / "requirements-runtime.lock").write_text(
        "# header\ntorch==2.9.1\ntorchaudio==2.9.1\ntorchvision-extra==1.0\nnumpy==2.3.5\n")
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "pip").write_text('#!/bin/sh\necho "$@" > pip-args\n')
    (bin_ / "pip").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}"}
    script = str(INFRA / "pip-layer.sh")
    done = subprocess.run(["sh", script, "torch|torchaudio"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    args = (tmp_path / "pip-args").read_text().split()
    assert args[:1] == ["install"] and "--no-deps" in args
    assert [a for a in args if "==" in a] == ["torch==2.9.1", "torchaudio==2.9.1"]
    done = subprocess.run(["sh", script, "tensorflow"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip() == ("pip-layer.sh: no pin in requirements-runtime.lock "
                                   "matches 'tensorflow'")


def test_image_tool_builds_each_stage_then_the_tagged_image_with_the_same_flags(tmp_path):
    image = _image_tool()
    args = type("Args", (), {"tag": "emoalign:test"})()
    dockerfile = INFRA / "Dockerfile"
    common = None
    for target in [name for _, name in image.dockerfile_stages(dockerfile)[:-1]] + [None]:
        command = image.bud_command(args, dockerfile, tmp_path, "localhost/base:x", "abc",
                                    False, target)
        assert "--layers" in command and "--layers=false" not in command
        assert ("--target" in command) == (target is not None)
        assert ("-t" in command) == (target is None), "only the whole image is tagged"
        rest = [w for i, w in enumerate(command) if w not in ("--target", "-t") and
                command[i - 1] not in ("--target", "-t")]
        common = common or rest
        assert rest == common, "a stage with other flags would miss the layer cache"
    assert command[command.index("--from") + 1] == "localhost/base:x"


def test_image_tool_counts_the_steps_it_built(tmp_path, monkeypatch):
    """What `buildah bud --layers` prints, read back: a stage's FROM is no step, a cached
    step is not built."""
    image = _image_tool()
    printed = tmp_path / "bud-output"
    printed.write_text("[1/2] STEP 1/3: FROM localhost/base AS base\n"
                       "[1/2] STEP 2/3: LABEL a=b\n--> Using cache 0123abcd\n--> 0123abc\n"
                       "[1/2] STEP 3/3: RUN sh pip-layer.sh 'torch'\n--> Using cache 4567\n"
                       "[2/2] STEP 1/3: FROM 4567 AS torch\n"
                       "[2/2] STEP 2/3: COPY model ./model\n--> 89ab\n"
                       "[2/2] STEP 3/3: RUN pip install .\nSTEP-like output: STEP 9/9: x\n"
                       "[2/2] COMMIT emoalign:test\n")
    log = tmp_path / "bud.log"
    returncode, raced, steps, cached = image.run_bud(["cat", str(printed)], str(log))
    assert (returncode, raced, steps, cached) == (0, False, 4, 2)
    assert log.read_text() == printed.read_text()


def _pins(path: Path) -> dict[str, str]:
    return {name.lower().replace("_", "-").replace(".", "-"): version for name, version in
            re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", path.read_text(), re.M)}


def test_the_image_lock_is_the_runtime_part_of_the_development_lock():
    """infra/requirements-runtime.lock is what the project's own dependencies reach (walked
    through the installed packages' metadata), each pinned as requirements.lock pins it, and
    none of the test or bench extras' packages."""
    done = subprocess.run([sys.executable, str(INFRA / "runtime_lock.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    runtime, development = _pins(INFRA / "requirements-runtime.lock"), _pins(
        ROOT / "requirements.lock")
    assert {k: development.get(k) for k in runtime} == runtime
    assert {"torch", "torchaudio", "kfp", "mlflow", "dvc", "great-expectations"} <= set(runtime)
    assert not {"pytest", "pytest-xdist", "librosa", "numba"} & set(runtime)


def test_server_requirements_are_pinned_and_agree_with_the_lock():
    lock = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (ROOT / "requirements.lock").read_text(),
                           re.M))
    lock = {k.lower().replace("_", "-"): v for k, v in lock.items()}
    extra = {}
    for line in (INFRA / "requirements-server.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"requirements-server.txt: {line!r} is not pinned"
            extra[name.lower()] = version
    assert {"boto3", "psycopg2-binary"} <= set(extra)
    for name, version in extra.items():
        assert lock.get(name, version) == version, f"{name} differs from requirements.lock"
    # boto3 and botocore are released in lockstep; pip would refuse a mismatched pair.
    assert extra["boto3"] == lock["botocore"], \
        "bump boto3 in infra/requirements-server.txt with botocore in requirements.lock"


# ---- the image, the project version and the compiled pipeline ---------------------------

def test_image_names_agree_everywhere():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert kfp_components.PROJECT_VERSION == version
    assert documented_tag(INFRA / "Dockerfile") == PROJECT_IMAGE
    assert documented_tag(INFRA / "Dockerfile.cuda") == f"{PROJECT_IMAGE}-cuda"
    if "EMOALIGN_IMAGE" not in os.environ:
        assert kfp_components.IMAGE == PROJECT_IMAGE
    ir, _ = compiled_docs()
    executors = ir["deploymentSpec"]["executors"]
    assert executors
    for label, executor in executors.items():
        assert executor["container"]["image"] == PROJECT_IMAGE, label


def _retry_policies(compiled: dict) -> dict:
    return {name: task["retryPolicy"] for dag in (c["dag"]["tasks"] for c in
            [compiled["root"], *compiled["components"].values()] if "dag" in c)
            for name, task in dag.items() if "retryPolicy" in task}


def test_network_steps_retry_after_10_20_40_s_unless_told_otherwise(tmp_path):
    compiled, _ = yaml.safe_load_all(COMPILED.read_text())
    policies = _retry_policies(compiled)
    assert set(policies) == cluster.RETRIED
    assert all(p == {"backoffDuration": "10s", "backoffFactor": 2.0,
                     "backoffMaxDuration": "60s", "maxRetryCount": 3}
               for p in policies.values()), policies
    # EMOALIGN_RETRY_BACKOFF_S, read when the DAG is built, sets the first wait.
    done = emoalign("compile", "--out", tmp_path / "p.yaml", cwd=ROOT,
                    env={"EMOALIGN_RETRY_BACKOFF_S": "1"})
    assert done.returncode == 0, done.stderr
    quick, _ = yaml.safe_load_all((tmp_path / "p.yaml").read_text())
    assert {p["backoffDuration"] for p in _retry_policies(quick).values()} == {"1s"}


def test_every_task_states_its_caching_and_a_run_has_a_deadline():
    """Each step is cached or not on purpose (cluster.py says why), and a scheduled run that
    hangs is stopped by the cluster."""
    compiled, platform = yaml.safe_load_all(COMPILED.read_text())
    assert cluster.CACHED.isdisjoint(cluster.UNCACHED)
    assert cluster.CACHED | cluster.UNCACHED == set(cluster.RESOURCES)
    tasks = {name: task for dag in (c["dag"]["tasks"] for c in
             [compiled["root"], *compiled["components"].values()] if "dag" in c)
             for name, task in dag.items() if name in cluster.RESOURCES}
    assert set(tasks) == set(cluster.RESOURCES)
    for step, task in tasks.items():
        assert task["cachingOptions"].get("enableCache", False) == (step in cluster.CACHED), \
            step
    assert {"fetch", "check", "notify"} <= cluster.UNCACHED
    assert {"ingest", "features"} <= cluster.CACHED
    deadline = platform["platforms"]["kubernetes"]["pipelineConfig"]["activeDeadlineSeconds"]
    assert deadline == cluster.RUN_DEADLINE_S > 0


def test_compiled_pipeline_asks_for_a_gpu_only_for_training():
    ir, _ = compiled_docs()
    labels = executor_of_step(ir)
    assert set(labels) == set(cluster.RESOURCES), "every step of cluster.py, once"
    executors = ir["deploymentSpec"]["executors"]
    for step, label in labels.items():
        accelerator = executors[label]["container"].get("resources", {}).get("accelerator")
        if step != "train":
            assert not accelerator, f"{step} asks for a GPU"
            continue
        assert accelerator, "train asks for no GPU"
        assert (accelerator.get("resourceType") or accelerator.get("type")) == \
            cluster.GPU_RESOURCE
        assert int(accelerator.get("resourceCount") or accelerator.get("count")) == 1
    train = platform_executors()[labels["train"]]
    key, value = cluster.GPU_NODE_LABEL
    assert train.get("nodeSelector", {}).get("labels") == {key: value}, "train: node selector"
    assert any(t.get("key") == cluster.GPU_RESOURCE and t.get("operator") == "Exists"
               and t.get("effect") == "NoSchedule" for t in train.get("tolerations", [])), \
        "train: no toleration of the GPU taint"
    for step, label in labels.items():
        if step != "train":
            assert "nodeSelector" not in platform_executors().get(label, {}), step


def test_compiled_pipeline_mounts_the_secrets_cluster_py_names():
    ir, _ = compiled_docs()
    executors = platform_executors()
    for step, label in executor_of_step(ir).items():
        names = secret_names(executors.get(label, {}))
        assert (cluster.MLFLOW_SECRET in names) == (step in cluster.USES_MLFLOW), step
        assert (cluster.S3_SECRET in names) == (step in cluster.USES_S3), step
    for step in ("track", "register"):
        names = secret_names(executors[executor_of_step(ir)[step]])
        assert {cluster.MLFLOW_SECRET, cluster.S3_SECRET} <= names, step


def test_a_port_left_in_time_wait_by_a_stopped_service_is_free_and_a_listener_is_not(
        monkeypatch):
    """`make stack`'s services restart on their own port (the e2e outage drills stop and
    start PostgreSQL): connections the stopped server closed linger in TIME_WAIT for a
    minute and must not make its port look busy; a process listening there must."""
    import importlib
    import socket
    import time

    monkeypatch.syspath_prepend(str(INFRA))
    stack = importlib.import_module("stack")
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    with pytest.raises(stack.StackError, match=f"port {port} for PostgreSQL is busy"):
        stack._check_port_free(port, "PostgreSQL", "STACK_PG_PORT")
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the server closes first: its end of the connection waits in TIME_WAIT
    time.sleep(0.1)
    client.close()
    server.close()
    stack._check_port_free(port, "PostgreSQL", "STACK_PG_PORT")


def test_configure_gives_kfps_setters_their_own_name_without_the_whole_stack():
    """kfp's setters ask inspect.stack()[1][3] for their name; while configure() runs they
    get it from the stand-in, and kfp's `inspect` is the real one again afterwards."""
    import inspect

    from kfp.dsl import pipeline_task

    def set_cpu_request():
        return _ensure_container_spec_exists()

    def _ensure_container_spec_exists():
        return pipeline_task.inspect.stack()[1][3]

    with cluster._setters_without_stack():
        assert pipeline_task.inspect is not inspect
        assert set_cpu_request() == "set_cpu_request"
    assert pipeline_task.inspect is inspect
