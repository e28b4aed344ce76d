"""The project image, built for real (infra/image.py: buildah, a wheelhouse, and the python
base or a Debian-made one where it cannot be pulled), and the pipeline run inside it as uid
10001 with `buildah run --isolation chroot` (podman/crun cannot start containers here).

`make e2e` runs it with the rest of e2e/ (`--image`); `make e2e-image` runs it alone. It
skips, saying why, when buildah cannot be installed or the disk is short of what a build
takes (infra/image.py exits 4: under 20 GB free even without the image it replaces).
EMOALIGN_E2E_IMAGE_REUSE=1 tests the image already built instead of building it again
(the check that no build-time secret reached the image then skips: it needs its own build).
"""

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TINY, UTTERANCES, sets

pytestmark = pytest.mark.image

IMAGE_SCRIPT = ROOT / "infra" / "image.py"
CACHE = Path(os.environ.get("EMOALIGN_IMAGE_CACHE") or
             (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") /
              "emoalign" / "image"))
TAG = "emoalign:0.1.0"
UID = 10001
NO_ROOM = 4  # infra/image.py's exit status when the disk is too short for a build
# In the host's environment while the image is built: no layer, label or history entry of the
# image may hold it.
SENTINEL = f"e2e-image-secret-{secrets.token_hex(12)}"
# Where the mounts sit in the container.
CORPUS, OUT = "/corpus", "/out"
# containers/storage re-executes buildah from a sealed memfd copy of itself; under load the
# kernel can refuse the seal (EBUSY while the copy's pages are still pinned) and the command
# fails before anything runs in the container. Nothing ran, so running it again is safe.
REEXEC_RACE = "sealing memfd copy"
ATTEMPTS = 3


def _run_buildah(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    for _ in range(ATTEMPTS):
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
        if done.returncode == 0 or REEXEC_RACE not in done.stderr:
            break
    return done


def _buildah(*args, check=True, timeout=600) -> subprocess.CompletedProcess:
    done = _run_buildah(["buildah", *map(str, args)], timeout)
    if check:
        assert done.returncode == 0, f"buildah {' '.join(map(str, args))}: {done.stderr}"
    return done


def _image_id() -> str | None:
    done = _buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", TAG,
                    check=False)
    return done.stdout.strip() or None if done.returncode == 0 else None


def _last_record(image_id: str) -> dict | None:
    builds = CACHE / "builds.jsonl"
    if not builds.exists():
        return None
    records = [json.loads(line) for line in builds.read_text().splitlines() if line.strip()]
    return next((r for r in reversed(records) if r["image_id"] == image_id), None)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> dict:
    """The build record of the image under test (infra/image.py's), plus `sentinel`: the
    secret that was in the build's environment (None for a reused image)."""
    tools = subprocess.run([sys.executable, IMAGE_SCRIPT, "tools"], capture_output=True,
                           text=True, timeout=900)
    if tools.returncode == 3:
        pytest.skip(f"buildah cannot be installed: {tools.stderr.strip()}")
    assert tools.returncode == 0, tools.stderr
    existing = _image_id()
    if os.environ.get("EMOALIGN_E2E_IMAGE_REUSE") == "1" and existing:
        record = _last_record(existing)
        assert record, f"{TAG} ({existing[:12]}) was not built by infra/image.py"
        return {**record, "sentinel": None}
    work = tmp_path_factory.mktemp("build")
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    env = {**os.environ, "EMOALIGN_E2E_SECRET": SENTINEL, "AWS_SECRET_ACCESS_KEY": SENTINEL,
           "MLFLOW_TRACKING_PASSWORD": SENTINEL}
    done = subprocess.run(
        [sys.executable, *map(str, (IMAGE_SCRIPT, "build", "--cache", CACHE, "--tag", TAG,
                                    "--log", work / "buildah.log",
                                    "--json", work / "build.json"))],
        env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode == NO_ROOM:
        pytest.skip(done.stderr.strip())
    log = (work / "buildah.log").read_text()[-4000:] if (work / "buildah.log").exists() else ""
    assert done.returncode == 0, f"{done.stdout}{done.stderr}\n{log}"
    record = json.loads((work / "build.json").read_text())
    assert record["git_sha"] == head
    print(done.stdout)
    return {**record, "sentinel": SENTINEL}


@pytest.fixture(scope="module")
def rootfs(image):
    """The image's file system (a working container of it, mounted), removed afterwards."""
    container = _buildah("from", "--pull=never", "--quiet", TAG).stdout.strip()
    try:
        yield Path(_buildah("mount", container).stdout.strip())
    finally:
        _buildah("umount", container, check=False)
        _buildah("rm", container, check=False)


@pytest.fixture(scope="module")
def code(rootfs, tmp_path_factory) -> Path:
    """The project's code as the image holds it, for the runs outside the image: both sides
    run the same code, whatever happens to the working tree meanwhile."""
    tree = tmp_path_factory.mktemp("code")
    for name in ("components", "configs", "model", "pipelines"):
        shutil.copytree(rootfs / "opt" / "emoalign" / name, tree / name)
    return tree


def _host(code: Path, *args, extra_env=None, timeout=900) -> subprocess.CompletedProcess:
    """`emoalign ARGS` outside the image: this machine's venv, the image's code."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "EMOALIGN_"))}
    env.update({"PYTHONPATH": str(code), "MLFLOW_DISABLE_TELEMETRY": "true",
                **(extra_env or {})})
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *map(str, args)], cwd=code,
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def corpus(code, tmp_path_factory) -> Path:
    """A small generated corpus, readable by anyone (it is mounted read-only)."""
    root = tmp_path_factory.mktemp("corpus", numbered=True) / "IEMOCAP_full_release"
    done = _host(code, "sample-corpus", root, "--utterances", UTTERANCES, "--seed", 7)
    assert done.returncode == 0, done.stderr
    for place in [root.parent, *root.parent.rglob("*")]:
        place.chmod(0o755 if place.is_dir() else 0o644)
    return root.parent


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    """The writable mount: owned by uid 10001, as a volume for the pod would be."""
    folder = tmp_path_factory.mktemp("out")
    os.chown(folder, UID, UID)
    folder.chmod(0o755)
    return folder


@pytest.fixture(scope="module")
def inside(image, corpus, out):
    """`CMD` in a working container of the image, as uid 10001, the corpus mounted read-only
    at /corpus and `out` writable at /out."""
    container = _buildah("from", "--pull=never", "--quiet", TAG).stdout.strip()

    def run(*cmd, env=None, user=str(UID), timeout=900) -> subprocess.CompletedProcess:
        args = ["buildah", "run", "--isolation", "chroot", "--user", user,
                "-v", f"{corpus}:{CORPUS}:ro", "-v", f"{out}:{OUT}"]
        for key, value in (env or {}).items():
            args += ["-e", f"{key}={value}"]
        return _run_buildah([*args, container, "--", *map(str, cmd)], timeout)

    yield run
    _buildah("rm", container, check=False)


def _layers(name: str) -> list[dict]:
    """The image's layers, base first, as infra/image.py reads them from buildah's overlay
    store ({diff_id, bytes, path: the layer's own files}); [] on another storage driver."""
    sys.path.insert(0, str(IMAGE_SCRIPT.parent))
    try:
        import image as image_tool
    finally:
        sys.path.remove(str(IMAGE_SCRIPT.parent))
    return image_tool.layers(name)


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


# ---- what the image is ------------------------------------------------------------------

def test_image_runs_as_uid_10001_and_bakes_the_commit(image, inside):
    config = json.loads(_buildah("inspect", "--type", "image", TAG).stdout)["OCIv1"]["config"]
    assert config["User"] == str(UID)
    assert config["Entrypoint"] == ["emoalign"]
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["EMOALIGN_GIT_SHA"] == image["git_sha"]
    assert env["EMOALIGN_GIT_DIRTY"] == str(image["git_dirty"]).lower()
    done = inside("sh", "-c", "id -u; printenv EMOALIGN_GIT_SHA; command -v emoalign; "
                         "command -v python")
    assert done.returncode == 0, done.stderr
    uid, sha, emoalign, python = done.stdout.split()
    assert (uid, sha) == (str(UID), image["git_sha"])
    assert emoalign == "/opt/venv/bin/emoalign" and python == "/opt/venv/bin/python"


def test_image_holds_no_git_no_pip_config_and_no_build_secret(image, rootfs):
    found = subprocess.run(["find", rootfs, "-name", ".git"], capture_output=True, text=True)
    assert found.stdout.strip() == "", f"the image holds .git: {found.stdout[:500]}"
    for conf in ("etc/pip.conf", "etc/xdg/pip/pip.conf", "root/.config/pip", "root/.pip",
                 "home/emoalign/.config/pip"):
        assert not (rootfs / conf).exists(), f"the image holds /{conf}"
    if image["sentinel"] is None:
        pytest.skip("EMOALIGN_E2E_IMAGE_REUSE=1: the image was not built by this session")
    # Every layer's own files, whiteouts and files a later layer hides included (the build
    # commits a layer per step); on a store other than overlay, the files the image shows.
    places = [layer["path"] for layer in _layers(TAG)] or [rootfs]
    grep = subprocess.run(["grep", "-rlsF", "-D", "skip", image["sentinel"], *places],
                          capture_output=True, text=True, timeout=1800)
    assert grep.returncode == 1 and grep.stdout == "", f"secret found in: {grep.stdout[:500]}"
    metadata = _buildah("inspect", "--type", "image", TAG).stdout
    assert "GIT_SHA" in metadata and image["sentinel"] not in metadata


def test_image_layers_are_small_and_no_intermediate_image_is_left_over(image):
    """What keeps a build's peak disk near the image's size: no layer over 2 GB (buildah
    holds the layer it commits three times over), and the store holds one copy (the image
    it replaced and the intermediate images only that one needed are gone)."""
    layers = _layers(TAG)
    if not layers:
        pytest.skip("layer sizes are read from buildah's overlay store")
    largest = max(layer["bytes"] for layer in layers)
    assert largest < 2e9, f"a layer of {largest / 1e9:.2f} GB"
    assert sum(layer["bytes"] for layer in layers) > 5e9  # CUDA torch: several layers
    leftovers = _buildah("images", "--quiet", "--filter", "dangling=true", "--filter",
                         "label=org.opencontainers.image.title=emoalign").stdout.split()
    assert leftovers == []
    print(f"{len(layers)} layers, the largest {largest / 1e9:.2f} GB; build: "
          f"{image['disk_peak_gb']} GB of disk at its peak, {image.get('steps_built')} steps "
          "built")


def test_writes_outside_the_output_mount_fail(inside, out):
    done = inside("sh", "-c", f"touch {OUT}/written && echo ok")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    assert (out / "written").stat().st_uid == UID  # the process really is uid 10001
    for target, reason in ((f"{CORPUS}/written", "Read-only file system"),
                           ("/opt/emoalign/written", "Permission denied"),
                           ("/opt/venv/lib/written", "Permission denied"),
                           ("/usr/written", "Permission denied")):
        done = inside("touch", target)
        assert done.returncode != 0 and reason in done.stderr, (target, done.stderr)


# ---- the steps inside it ----------------------------------------------------------------

def test_sample_corpus_inside_writes_the_same_corpus(inside, corpus, out):
    done = inside("emoalign", "sample-corpus", f"{OUT}/generated/IEMOCAP_full_release",
                  "--utterances", UTTERANCES, "--seed", 7)
    assert done.returncode == 0, done.stderr
    assert _tree_digest(out / "generated") == _tree_digest(corpus)


def test_step_commands_inside(inside, out):
    steps = f"{OUT}/steps"
    commands = [
        ("ingest", "--corpus", CORPUS, "--out", f"{steps}/ingest"),
        ("validate", "--manifest", f"{steps}/ingest", "--out", f"{steps}/validated"),
        ("features", "--manifest", f"{steps}/validated", "--out", f"{steps}/store"),
        ("train", "--store", f"{steps}/store", "--manifest", f"{steps}/validated",
         "--out", f"{steps}/model", *sets(TINY[:6])),
        ("evaluate", "--model", f"{steps}/model", "--store", f"{steps}/store",
         "--manifest", f"{steps}/validated", "--out", f"{steps}/eval", *sets(TINY[:6])),
    ]
    for command in commands:
        done = inside("emoalign", *command)
        assert done.returncode == 0, f"{command[0]}: {done.stderr[-3000:]}"
    assert (out / "steps" / "ingest" / "manifest.parquet").exists()
    metrics = json.loads((out / "steps" / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["ua"] <= 1.0 and 0.0 <= metrics["wa"] <= 1.0
    owners = {p.stat().st_uid for p in (out / "steps").rglob("*")}
    assert owners == {UID}


@pytest.fixture(scope="module")
def runs(image, inside, code, corpus, out, tmp_path_factory) -> dict:
    """The same `emoalign run` inside the image and outside it (this machine's venv, CPU)."""
    args = ["run", "--corpus", None, "--workdir", None, "--summary-json", None, *sets(TINY)]

    def with_paths(corpus_dir, root):
        filled = list(args)
        filled[2], filled[4], filled[6] = corpus_dir, f"{root}/runs", f"{root}/summary.json"
        return filled

    done = inside("emoalign", *with_paths(CORPUS, f"{OUT}/run"),
                  env={"MLFLOW_TRACKING_URI": f"sqlite:///{OUT}/run/mlflow/mlflow.db"},
                  timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    host = tmp_path_factory.mktemp("host-run")
    outside = _host(code, *with_paths(corpus, host), timeout=1800, extra_env={
        "MLFLOW_TRACKING_URI": f"sqlite:///{host}/mlflow/mlflow.db",
        "EMOALIGN_GIT_SHA": image["git_sha"],
        "EMOALIGN_GIT_DIRTY": str(image["git_dirty"]).lower()})
    assert outside.returncode == 0, outside.stderr[-3000:] + outside.stdout[-3000:]
    inside = json.loads((out / "run" / "summary.json").read_text())
    outside = json.loads((host / "summary.json").read_text())
    return {"inside": inside, "outside": outside,
            "inside_dir": out / "run" / "runs" / "pipeline_root" / inside["pipeline_run"],
            "outside_dir": Path(outside["run_dir"])}


def test_whole_run_inside_the_image_matches_the_run_outside(runs, image, out):
    inside, outside = runs["inside"], runs["outside"]
    print(f"inside the image: wa {inside['wa']} ua {inside['ua']}; "
          f"outside: wa {outside['wa']} ua {outside['ua']}")
    assert inside["retrained"] and inside["model_version"] == "1"
    assert (inside["wa"], inside["ua"]) == (outside["wa"], outside["ua"])
    assert inside["results"] == outside["results"]
    # A tiny model can score like a constant guess: the predicted probabilities and the
    # trained weights, byte for byte, show that the two runs computed the same thing.
    predictions = Path("summarize", "evaluation", "predictions.csv")
    assert (runs["inside_dir"] / predictions).read_bytes() == \
        (runs["outside_dir"] / predictions).read_bytes()
    weights = sorted(p.relative_to(runs["inside_dir"])
                     for p in (runs["inside_dir"] / "summarize" / "model").rglob("model.pt"))
    assert weights
    for rel in weights:
        assert (runs["inside_dir"] / rel).read_bytes() == (runs["outside_dir"] / rel).read_bytes()
    assert inside["data_hash"] == outside["data_hash"]
    assert inside["git_sha"] == image["git_sha"]
    # MLflow's SQLite store and its artifacts stayed inside the output mount.
    assert inside["tracking_uri"] == f"sqlite:///{OUT}/run/mlflow/mlflow.db"
    assert (out / "run" / "mlflow" / "mlflow.db").stat().st_uid == UID
    assert any((out / "run" / "mlflow" / "mlartifacts").rglob("MLmodel"))
