"""`make image`: build the project image (infra/Dockerfile) with buildah, on this machine.

    python infra/image.py build [--cache DIR] [--tag emoalign:0.1.0] [--base auto|debootstrap]
    python infra/image.py tools      # install buildah when missing (exit 3: cannot)

What a build does, and what it reuses from the cache folder (default
~/.cache/emoalign/image, outside the checkout, so that a fresh clone on the same machine, as
in CI, reuses it):

1. buildah (and debootstrap when the base must be made) from apt-get when missing.
2. The wheelhouse: `pip download` of infra/requirements-runtime.lock (the image's lock),
   infra/requirements-server.txt and what `pip install .` builds with, on this machine,
   into wheelhouse-<hash of those inputs>; reused while they do not change. The build
   mounts it read-only at /wheels and pip installs from it alone (`--no-index`), so the
   build itself needs no package index.
3. The base: the Dockerfile's FROM (python:3.11.7-slim-bookworm) when it is in buildah's
   store or can be pulled; otherwise (air-gapped, or public container registries out of
   reach, as here) a Debian bookworm base made with debootstrap and imported into buildah as
   localhost/emoalign-base:bookworm-<hash of the debootstrap command>, reused while that
   command does not change, and passed to `buildah bud --from`.
4. `buildah bud --isolation chroot --pull=never --layers`, once per stage of the
   Dockerfile in order (`--target`), then the whole, with GIT_SHA / GIT_DIRTY as build args.
   Only those two build args go in: nothing of this process's environment reaches the image.
   The stages put the lock's large packages in layers of under 2 GB: buildah holds a layer
   three times over while it commits it, and a stage's working container until its build
   ends, so one stage at a time keeps the peak to the image plus about twice its largest
   layer. Steps whose inputs did not change come from the layer cache.
   The image it replaces is removed, and with it the intermediate images no image needs any
   more, so the store holds one copy.

It prints, and appends to CACHE/builds.jsonl, the time of each part and the image's size.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "infra" / "Dockerfile"
DEFAULT_TAG = "emoalign:0.1.0"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / \
    "emoalign" / "image"
# The wheelhouse: the image's lock (the runtime part of requirements.lock: no test or bench
# packages), what `mlflow server` needs, and what `pip install --no-deps .` builds with
# (pyproject.toml's build-system).
REQUIREMENTS = [ROOT / "infra" / "requirements-runtime.lock",
                ROOT / "infra" / "requirements-server.txt"]
BUILD_REQUIREMENTS = ["setuptools>=68", "wheel"]
# The stand-in base: Debian bookworm's Python 3.11, venv, pip, git and CA certificates.
DEBOOTSTRAP = ["debootstrap", "--variant=minbase",
               "--include=python3,python3-venv,python3-pip,git,ca-certificates", "bookworm"]
BASE_REPO = "localhost/emoalign-base"
BASE_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG=C.UTF-8"]
# What the import leaves out of the debootstrap tree: the device nodes debootstrap made (a
# container runtime mounts its own /dev). Part of the base's cache key, with the above.
BASE_EXCLUDE = ["./dev/*"]
# Free space a build takes at its peak, measured (benchmarks/RESULTS.md, "The project
# image"), with no layer cached, plus room for other writers.
MIN_FREE_GB = 20
# The label infra/Dockerfile's first stage sets: every intermediate image of its builds has it.
BUILD_LABEL = "org.opencontainers.image.title=emoalign"
STORAGE = Path("/var/lib/containers")  # buildah's store, as root
TOOLS_MISSING = 3  # exit status: buildah (or debootstrap) cannot be installed
NO_ROOM = 4  # exit status: too little free disk, even without the image this build replaces
# containers/storage re-executes buildah from a sealed memfd copy of itself; under load the
# kernel can refuse the seal (EBUSY while pages are still pinned) and buildah exits before
# doing anything, so building again is safe.
REEXEC_RACE = "sealing memfd copy"
BUILDAH_ATTEMPTS = 2


class ImageError(RuntimeError):
    pass


class ToolsMissing(ImageError):
    pass


class NoRoom(ImageError):
    pass


def log(message: str) -> None:
    print(f"[image] {message}", flush=True)


def run(*args, check=True, capture=False, timeout=None, **kwargs) -> subprocess.CompletedProcess:
    args = [str(a) for a in args]
    for _ in range(BUILDAH_ATTEMPTS):
        done = subprocess.run(args, text=True, timeout=timeout,
                              capture_output=capture, **kwargs)
        if done.returncode == 0 or REEXEC_RACE not in (done.stderr or ""):
            break
    if check and done.returncode != 0:
        detail = (done.stderr or "").strip()[-2000:] if capture else ""
        raise ImageError(f"{shlex.join(args[:6])}{' ...' if len(args) > 6 else ''} "
                         f"failed ({done.returncode}){': ' + detail if detail else ''}")
    return done


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return str(n)


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def free_gb(path: Path) -> float:
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free / 1e9


class LowestFree:
    """The least free space under `path` while the `with` block runs, sampled each second."""

    def __init__(self, path: Path):
        self.path = path
        self.at_start = self.lowest = free_gb(path)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(1.0):
            self.lowest = min(self.lowest, free_gb(self.path))

    def __enter__(self) -> "LowestFree":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.lowest = min(self.lowest, free_gb(self.path))

    @property
    def peak_use_gb(self) -> float:
        return self.at_start - self.lowest


def make_room(previous: str | None, min_free_gb: float) -> str | None:
    """Check that a build fits; when it fits only without the image it replaces, remove that
    image first (the build would remove it anyway). Returns the image still to replace."""
    free = free_gb(STORAGE)
    if free >= min_free_gb:
        return previous
    reclaimable = image_size(previous) / 1e9 if previous else 0.0
    if free + reclaimable < min_free_gb:
        raise NoRoom(f"{free:.0f} GB free under {STORAGE}"
                     + (f" ({free + reclaimable:.0f} GB without the image this build replaces)"
                        if previous else "")
                     + f"; a build needs about {min_free_gb:.0f} GB (--min-free-gb)")
    log(f"{free:.0f} GB free under {STORAGE}, {min_free_gb:.0f} GB needed: removing the image "
        f"this build replaces ({previous[:12]}, {reclaimable:.1f} GB) first")
    remove_image(previous)
    return None


# ---- tools --------------------------------------------------------------------------------

def ensure_tools(*names: str) -> None:
    """apt-get install the Debian packages named whose command is missing."""
    missing = [n for n in names if not shutil.which(n)]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ToolsMissing(f"{', '.join(missing)} missing and cannot be installed here "
                         "(apt-get as root): install them first")
    log(f"installing {' '.join(missing)} (apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for step in (["apt-get", "update", "-qq"],
                 ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]):
        done = subprocess.run(step, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise ToolsMissing(f"{' '.join(step)} failed: {done.stderr.strip()[-1000:]}")
    still = [n for n in names if not shutil.which(n)]
    if still:
        raise ToolsMissing(f"{', '.join(still)} still missing after apt-get install")


# ---- buildah store ------------------------------------------------------------------------

def run_bud(command: list[str], log_path: str | None) -> tuple[int, bool, int, int]:
    """Run `buildah bud`, its output appended to `log_path` or else to the terminal; return
    its exit status, whether it failed on the re-exec race (REEXEC_RACE), how many steps it
    walked (FROM aside) and how many of them came from the layer cache."""
    raced, steps, cached = False, 0, 0
    with (open(log_path, "a") if log_path else contextlib.nullcontext(sys.stdout)) as sink:
        with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) as bud:
            for line in bud.stdout:
                sink.write(line)
                raced = raced or REEXEC_RACE in line
                # A stage's FROM is neither built nor cached: not counted.
                steps += bool(re.match(r"(\[\d+/\d+\] )?STEP \d+/\d+: (?!FROM )", line))
                cached += line.startswith("--> Using cache")
        sink.flush()
    return bud.returncode, raced, steps, cached


def image_id(name: str) -> str | None:
    done = run("buildah", "inspect", "--type", "image", "--format", "{{.FromImageID}}", name,
               check=False, capture=True)
    return done.stdout.strip() or None if done.returncode == 0 else None


def image_size(ref: str) -> int:
    """Bytes the image takes unpacked, as `buildah images` shows it (3 significant digits)."""
    wanted = image_id(ref) or ref
    entries = json.loads(run("buildah", "images", "--json", capture=True).stdout or "[]")
    for entry in entries:
        if entry["id"].startswith(wanted) or wanted.startswith(entry["id"]):
            size = str(entry["size"])
            number, _, unit = size.partition(" ")
            scale = {"": 1, "B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}
            return int(float(number) * scale[unit])
    raise ImageError(f"no image {ref} in buildah's store")


def layers(ref: str) -> list[dict]:
    """The image's layers, base first: {diff_id, bytes, path (the layer's own files)}, read
    from buildah's overlay store; [] on another storage driver."""
    store = json.loads(run("buildah", "info", capture=True).stdout)["store"]
    if store["GraphDriverName"] != "overlay":
        return []
    root = Path(store["GraphRoot"])
    stored = {layer.get("diff-digest"): layer for layer in
              json.loads((root / "overlay-layers" / "layers.json").read_text())}
    diff_ids = json.loads(run("buildah", "inspect", "--type", "image", ref, capture=True)
                          .stdout)["OCIv1"]["rootfs"]["diff_ids"]
    return [{"diff_id": d, "bytes": stored[d]["diff-size"],
             "path": root / "overlay" / stored[d]["id"] / "diff"} for d in diff_ids]


def images_named(repo: str) -> list[str]:
    done = run("buildah", "images", "--json", check=False, capture=True)
    if done.returncode != 0 or not done.stdout.strip():
        return []
    return [name for e in json.loads(done.stdout) for name in e.get("names") or []
            if name.startswith(repo + ":")]


def remove_image(ref: str) -> None:
    done = run("buildah", "rmi", ref, check=False, capture=True)
    if done.returncode != 0:
        log(f"could not remove {ref}: {done.stderr.strip()[-300:]}")


def leftover_images() -> list[str]:
    """Intermediate images of earlier builds that no image needs: untagged, without a child
    (an older build's stages after the image it built was replaced, or a failed build's)."""
    done = run("buildah", "images", "--quiet", "--no-trunc", "--filter", "dangling=true",
               "--filter", f"label={BUILD_LABEL}", check=False, capture=True)
    return done.stdout.split() if done.returncode == 0 else []


def remove_leftovers() -> int:
    """Remove leftover_images(); removing one removes the parents only it needed. Returns
    how many were removed."""
    removed = 0
    for _ in range(20):  # each pass may leave a parent childless
        leftovers = leftover_images()
        if not leftovers:
            break
        for ref in leftovers:
            remove_image(ref)
        removed += len(leftovers)
    return removed


# ---- wheelhouse ---------------------------------------------------------------------------

def wheelhouse_key() -> str:
    digest = hashlib.sha256()
    for path in REQUIREMENTS:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update("\n".join(BUILD_REQUIREMENTS).encode())
    digest.update(f"cp{sys.version_info.major}{sys.version_info.minor}".encode())
    return digest.hexdigest()[:16]


def wheelhouse(cache: Path) -> tuple[Path, dict]:
    """(the folder, what happened): reused while its inputs are unchanged, else downloaded."""
    if sys.version_info[:2] != (3, 11):
        raise ImageError("the wheelhouse must be downloaded by Python 3.11, the image's "
                         f"Python (this is {sys.version.split()[0]}): run with .venv/bin/python")
    key = wheelhouse_key()
    folder = cache / f"wheelhouse-{key}"
    done_file = folder / ".complete.json"
    if done_file.exists():
        record = json.loads(done_file.read_text())
        log(f"wheelhouse: reusing {folder} ({record['files']} files, "
            f"{human(record['bytes'])})")
        return folder, {**record, "reused": True, "seconds": 0.0}
    for old in cache.glob("wheelhouse-*"):  # disk is limited: one wheelhouse at a time
        log(f"wheelhouse: removing {old.name} (its inputs changed)")
        shutil.rmtree(old)
    partial = cache / f"wheelhouse-{key}.partial"
    partial.mkdir(parents=True)
    log(f"wheelhouse: pip download into {folder} ...")
    started = time.monotonic()
    args = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
            "--quiet", "--progress-bar", "off", "-d", partial]
    for path in REQUIREMENTS:
        args += ["-r", path]
    run(*args, *BUILD_REQUIREMENTS)
    seconds = time.monotonic() - started
    files = [p for p in partial.iterdir() if p.is_file()]
    sdists = sorted(p.name for p in files if not p.name.endswith(".whl"))
    record = {"key": key, "files": len(files), "bytes": tree_bytes(partial),
              "download_seconds": round(seconds, 1), "sdists": sdists}
    (partial / ".complete.json").write_text(json.dumps(record, indent=1) + "\n")
    partial.rename(folder)
    log(f"wheelhouse: {len(files)} files, {human(record['bytes'])} in {seconds:.0f} s"
        + (f"; source distributions: {', '.join(sdists)}" if sdists else ""))
    return folder, {**record, "reused": False, "seconds": round(seconds, 1)}


# ---- base ---------------------------------------------------------------------------------

def dockerfile_stages(dockerfile: Path) -> list[tuple[str, str | None]]:
    """(FROM's image or stage, the stage's name or None) for each stage, in order."""
    return [(image, name or None) for image, name in re.findall(
        r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?\s*$", dockerfile.read_text(), re.M | re.I)]


def dockerfile_base(dockerfile: Path) -> str:
    """The image the first stage starts from: the one image the build needs from outside."""
    stages = dockerfile_stages(dockerfile)
    if not stages:
        raise ImageError(f"{dockerfile}: no FROM")
    names = {name for _, name in stages}
    outside = [image for image, _ in stages if image not in names]
    if outside != [stages[0][0]]:
        raise ImageError(f"{dockerfile}: expected only the first stage to start from an "
                         f"image, found {outside}")
    return stages[0][0]


def pull(name: str) -> bool:
    log(f"base: pulling {name} ...")
    try:
        done = run("buildah", "pull", "--quiet", "--retry", "0", name, check=False,
                   capture=True, timeout=600)
    except subprocess.TimeoutExpired:
        log("base: pull timed out")
        return False
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["?"])[-1][:300]
        log(f"base: cannot pull it ({reason})")
    return done.returncode == 0


def debootstrap_base(cache: Path) -> tuple[str, dict]:
    """The Debian bookworm stand-in base, made once per debootstrap command."""
    key = hashlib.sha256(shlex.join(DEBOOTSTRAP + BASE_ENV + BASE_EXCLUDE).encode()
                         ).hexdigest()[:12]
    name = f"{BASE_REPO}:bookworm-{key}"
    if image_id(name):
        log(f"base: reusing {name}")
        return name, {"name": name, "how": "debootstrap", "reused": True, "seconds": 0.0}
    ensure_tools("debootstrap")
    for old in images_named(BASE_REPO):
        log(f"base: removing {old} (its debootstrap command changed)")
        remove_image(old)
    rootfs = cache / "base-rootfs.partial"
    if rootfs.exists():
        shutil.rmtree(rootfs)
    rootfs.parent.mkdir(parents=True, exist_ok=True)
    log(f"base: {shlex.join(DEBOOTSTRAP)} {rootfs} ...")
    started = time.monotonic()
    container = None
    try:
        done = run(*DEBOOTSTRAP, rootfs, check=False, capture=True)
        if done.returncode != 0:
            raise ImageError(f"debootstrap failed: {(done.stdout + done.stderr)[-1500:]}")
        bootstrapped = time.monotonic() - started
        # Imported with buildah alone (no podman): a scratch container, the tree copied into
        # it as root, committed with a PATH and locale like the python image's.
        container = run("buildah", "from", "scratch", capture=True).stdout.strip()
        mount = run("buildah", "mount", container, capture=True).stdout.strip()
        excludes = [f"--exclude={pattern}" for pattern in BASE_EXCLUDE]
        with subprocess.Popen(["tar", "-C", rootfs, *excludes, "-cf", "-", "."],
                              stdout=subprocess.PIPE) as source:
            run("tar", "-C", mount, "-xpf", "-", "--numeric-owner", stdin=source.stdout)
        if source.returncode != 0:
            raise ImageError("tar of the debootstrap tree failed")
        run("buildah", "umount", container, capture=True)
        config = ["buildah", "config", "--cmd", "/bin/bash",
                  "--label", f"emoalign.base.debootstrap={shlex.join(DEBOOTSTRAP)}"]
        for env in BASE_ENV:
            config += ["--env", env]
        run(*config, container, capture=True)
        run("buildah", "commit", "--quiet", "--rm", container, name, capture=True)
        container = None
    finally:
        if container:
            run("buildah", "rm", container, check=False, capture=True)
        shutil.rmtree(rootfs, ignore_errors=True)
    seconds = time.monotonic() - started
    size = image_size(name)
    log(f"base: {name}, {human(size)}, in {seconds:.0f} s (debootstrap {bootstrapped:.0f} s)")
    return name, {"name": name, "how": "debootstrap", "reused": False,
                  "seconds": round(seconds, 1), "debootstrap_seconds": round(bootstrapped, 1),
                  "bytes": size}


def base_image(cache: Path, upstream: str, mode: str) -> tuple[str | None, dict]:
    """(the --from value, None to build FROM the Dockerfile's base; what happened)."""
    if mode == "auto":
        if image_id(upstream):
            log(f"base: {upstream} is in buildah's store")
            return None, {"name": upstream, "how": "local", "reused": True, "seconds": 0.0}
        started = time.monotonic()
        if pull(upstream):
            return None, {"name": upstream, "how": "pulled", "reused": False,
                          "seconds": round(time.monotonic() - started, 1)}
        log("base: making an equivalent one from Debian packages instead")
    return debootstrap_base(cache)


# ---- the build ----------------------------------------------------------------------------

def copied_paths(dockerfile: Path) -> list[str]:
    """What the Dockerfile copies from the build context."""
    paths = []
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if words and words[0].upper() in ("COPY", "ADD"):
            paths += [w for w in words[1:-1] if not w.startswith("--")]
    return paths


def git_state(dockerfile: Path) -> tuple[str, bool]:
    """(HEAD, dirty): dirty when anything the image copies differs from HEAD, untracked
    files under the copied folders included."""
    sha = run("git", "-C", ROOT, "rev-parse", "HEAD", capture=True).stdout.strip()
    status = run("git", "-C", ROOT, "status", "--porcelain", "--untracked-files=all", "--",
                 *copied_paths(dockerfile), capture=True).stdout
    return sha, bool(status.strip())


def bud_command(args, dockerfile: Path, wheels: Path, from_image: str | None, sha: str,
                dirty: bool, target: str | None = None) -> list[str]:
    """`buildah bud` for one stage (`target`) or, with None, for the whole image (tagged).
    Every other flag is the same for each, so each stage's steps hit the layer cache the
    stages before it filled."""
    bud = ["buildah", "bud", "--isolation", "chroot", "--pull=never", "--force-rm",
           "--layers", "-f", dockerfile, *(["--target", target] if target else
                                           ["-t", args.tag]),
           "-v", f"{wheels}:/wheels:ro",
           "--build-arg", f"GIT_SHA={sha}", "--build-arg", f"GIT_DIRTY={str(dirty).lower()}",
           "--label", f"org.opencontainers.image.revision={sha}",
           "--label", f"emoalign.git-dirty={str(dirty).lower()}"]
    if from_image:
        bud += ["--from", from_image]
    return [*map(str, bud), str(ROOT)]


def run_stage(command: list[str], log_path: str | None, disk: "LowestFree") -> tuple[int, int]:
    """Run one `buildah bud` (again once, on the re-exec race); return how many steps it
    walked and how many of them it built (the rest came from the layer cache)."""
    for attempt in range(1, BUILDAH_ATTEMPTS + 1):
        returncode, raced, steps, cached = run_bud(command, log_path)
        if returncode == 0 or not raced or attempt == BUILDAH_ATTEMPTS:
            break
        log(f"buildah could not re-execute itself ({REEXEC_RACE}: a kernel race under "
            "load, nothing was built); building again")
    if returncode != 0:
        filled = (f" with the disk full ({disk.at_start:.0f} GB were free under {STORAGE}; "
                  "raise --min-free-gb)" if free_gb(STORAGE) < 1 or disk.lowest < 1 else "")
        raise ImageError(f"buildah bud failed ({returncode}){filled}"
                         + (f"; see {log_path}" if log_path else ""))
    return steps, steps - cached


def run_build(commands: dict[str | None, list[str]], log_path: str | None
              ) -> tuple[LowestFree, dict]:
    """Build each stage, then the image; return how low free disk went and, per stage
    (None: the image), its seconds and how many steps it built. A stage's build walks the
    stages before it again, from the layer cache they just filled."""
    if log_path:
        Path(log_path).write_text("")
    stages = {}
    with LowestFree(STORAGE) as disk:
        for target, command in commands.items():
            started = time.monotonic()
            log(f"  {'stage ' + target if target else 'the image'} ...")
            steps, built = run_stage(command, log_path, disk)
            stages[target or "image"] = {"seconds": round(time.monotonic() - started, 1),
                                         "steps": steps, "built_steps": built}
    return disk, stages


def layers_line(built: int, steps: int) -> str:
    if built >= steps:
        return f"all {steps} steps built"
    return f"{built} of its {steps} steps built, the rest from the layer cache"


def build(args) -> dict:
    cache = Path(args.cache).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    dockerfile = Path(args.dockerfile).resolve()
    started = time.monotonic()
    ensure_tools("buildah")
    wheels, wheel_record = wheelhouse(cache)
    from_image, base_record = base_image(cache, dockerfile_base(dockerfile), args.base)
    sha, dirty = git_state(dockerfile)
    previous = make_room(image_id(args.tag), args.min_free_gb)
    log(f"building {args.tag} from {from_image or base_record['name']} "
        f"(commit {sha[:12]}{', dirty' if dirty else ''}) ...")
    build_started = time.monotonic()
    targets = [name for _, name in dockerfile_stages(dockerfile)[:-1]] + [None]
    disk, stages = run_build({target: bud_command(args, dockerfile, wheels, from_image, sha,
                                                  dirty, target) for target in targets},
                             args.log)
    build_seconds = time.monotonic() - build_started
    new = image_id(args.tag)
    if previous and previous != new:
        log(f"removing the image it replaces ({previous[:12]})")
        remove_image(previous)
    leftovers = remove_leftovers()
    if leftovers:
        log(f"removed {leftovers} intermediate image(s) no image needs any more")
    size = image_size(new)
    total = time.monotonic() - started
    record = {
        "tag": args.tag, "image_id": new, "bytes": size, "git_sha": sha, "git_dirty": dirty,
        "dockerfile": str(dockerfile.relative_to(ROOT)),
        # Of the wheelhouse and the base; how much of the build the layer cache gave is
        # `steps_built` below.
        "kind": {2: "warm", 0: "cold"}.get(wheel_record["reused"] + base_record["reused"],
                                           "partly cached"),
        "seconds": {"wheelhouse": wheel_record["seconds"], "base": base_record["seconds"],
                    "build": round(build_seconds, 1), "total": round(total, 1)},
        "wheelhouse": {k: wheel_record[k] for k in ("key", "files", "bytes", "reused")},
        "base": base_record, "disk_peak_gb": round(disk.peak_use_gb, 1), "stages": stages,
        "steps_built": sum(v["built_steps"] for v in stages.values()),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with open(cache / "builds.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    s = record["seconds"]
    log(f"{args.tag} ({new[:12]}): {human(size)}; build {s['total']:.0f} s "
        f"(wheelhouse {s['wheelhouse']:.0f} s{' reused' * wheel_record['reused']}, base "
        f"{s['base']:.0f} s{' reused' * base_record['reused']}, buildah bud "
        f"{s['build']:.0f} s, {layers_line(record['steps_built'], stages['image']['steps'])})"
        f", {record['disk_peak_gb']:.1f} GB of "
        f"disk at its peak; "
        f"recorded in {cache / 'builds.jsonl'}")
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="infra/image.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="build the image (reusing wheelhouse and base)")
    p.add_argument("--cache", default=os.environ.get("EMOALIGN_IMAGE_CACHE", DEFAULT_CACHE),
                   help="wheelhouse, build records (default: ~/.cache/emoalign/image, or "
                        "$EMOALIGN_IMAGE_CACHE)")
    p.add_argument("--tag", default=DEFAULT_TAG)
    p.add_argument("--dockerfile", default=DOCKERFILE)
    p.add_argument("--base", choices=("auto", "debootstrap"), default="auto",
                   help="auto: the Dockerfile's FROM when it is here or can be pulled, else "
                        "debootstrap; debootstrap: always the Debian-made base")
    p.add_argument("--min-free-gb", type=float, default=MIN_FREE_GB)
    p.add_argument("--log", help="write buildah's output here instead of to the terminal")
    p.add_argument("--json", help="also write the build record here")
    sub.add_parser("tools", help="install buildah with apt-get when missing")
    args = parser.parse_args(argv)
    try:
        if args.command == "tools":
            ensure_tools("buildah")
            log(run("buildah", "--version", capture=True).stdout.strip())
            return 0
        build(args)
    except ImageError as e:
        print(f"infra/image.py: {e}", file=sys.stderr)
        return TOOLS_MISSING if isinstance(e, ToolsMissing) else NO_ROOM \
            if isinstance(e, NoRoom) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
