"""`emoalign audit`: prove where a registered model came from and that it can be rebuilt.

Checks, in order: the recorded commit exists (and the tree was clean when it trained); the
recorded data hash matches `data.dvc` at that commit and the corpus read now; the recorded
config is the one whose hash is on the run. Then the steps run again at that commit (a git
worktree when it differs from the checkout), from the recorded config and seed, on that
data, and the new metrics and weights are compared with the registered ones: exactly on CPU.
"""

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from components import lineage, registry
from components.config import config_from_yaml
from components.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
COMPARED = ("wa", "ua", "per_class", "confusion", "per_session", "n_test")


@dataclass
class Audit:
    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def ok(self, what: str, detail: str) -> None:
        self.lines.append(f"OK        {what}: {detail}")

    def fail(self, what: str, detail: str) -> None:
        self.lines.append(f"MISMATCH  {what}: {detail}")
        self.failures.append(what)

    def note(self, what: str, detail: str) -> None:
        self.lines.append(f"NOTE      {what}: {detail}")


def _git(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True,
                          text=True, check=check)


def _dvc_hash_at(sha: str) -> str | None:
    shown = _git("show", f"{sha}:data.dvc", check=False)
    if shown.returncode != 0:
        return None
    outs = (yaml.safe_load(shown.stdout) or {}).get("outs") or []
    return outs[0].get("md5") if outs else None


def audit(uri: str, corpus: Path | None, workdir: Path, keep: bool = False) -> Audit:
    import mlflow.artifacts

    result = Audit()
    client = registry.connect()
    version = registry.resolve(client, uri)
    run = client.get_run(version.run_id)
    tags = run.data.tags
    result.note("model", f"{version.name} version {version.version} from MLflow run "
                         f"{version.run_id} (pipeline run {tags.get('pipeline_run')})")

    # -- code ---------------------------------------------------------------------------
    sha = tags.get("git_sha", "unknown")
    if sha == "unknown" or _git("cat-file", "-e", f"{sha}^{{commit}}", check=False).returncode:
        result.fail("code", f"commit {sha} is not in this repository")
        return result
    if tags.get("git_dirty") == "true":
        result.fail("code", f"commit {sha[:12]} had uncommitted changes when the model was "
                            "trained; what trained it is not recorded")
    else:
        result.ok("code", f"commit {sha[:12]}, clean working tree at training time")

    # -- data ---------------------------------------------------------------------------
    data_hash = tags.get("data_hash", "")
    pinned = _dvc_hash_at(sha)
    if pinned == data_hash:
        result.ok("data.dvc", f"at {sha[:12]} records {data_hash}")
    else:
        result.note("data.dvc", f"at {sha[:12]} records {pinned}, the model's data hash is "
                                f"{data_hash}: it was trained on another corpus")
    if corpus is None:
        if pinned == data_hash:
            corpus = PROJECT_ROOT / "data"
        elif tags.get("corpus"):
            corpus = Path(tags["corpus"])
        else:
            raise UserError("the model's corpus is not data/ at its commit; pass --corpus")
    from components import iemocap

    try:
        actual = lineage.corpus_hash(iemocap.find_release_root(corpus))
    except (FileNotFoundError, iemocap.FormatError) as e:
        raise UserError(f"cannot read the corpus to audit against: {e}") from None
    if actual != data_hash and corpus.resolve() == (PROJECT_ROOT / "data").resolve():
        # data/ is hashed as the folder DVC tracks, not the release root inside it
        actual = lineage.corpus_hash(corpus)
    if actual != data_hash:
        result.fail("data", f"{corpus} hashes to {actual}, the model was trained on "
                            f"{data_hash}; check out that version (`git checkout {sha[:12]} "
                            "-- data.dvc && dvc checkout`) or pass --corpus")
        return result
    result.ok("data", f"{corpus} hashes to {data_hash}")

    # -- config -------------------------------------------------------------------------
    # The re-run happens in another working directory (the worktree): absolute paths only.
    corpus = corpus.resolve()
    scratch = Path(tempfile.mkdtemp(prefix="emoalign-audit-", dir=Path(workdir).resolve()))
    recorded = Path(mlflow.artifacts.download_artifacts(
        run_id=version.run_id, artifact_path="run/config.resolved.yaml",
        dst_path=str(scratch / "recorded"), tracking_uri=client.tracking_uri))
    config = config_from_yaml(recorded.read_text())
    if config.sha256() == tags.get("config_sha256"):
        result.ok("config", f"resolved config matches config_sha256 {config.sha256()[:12]}; "
                            f"seed {config.seed}")
    else:
        result.fail("config", "the logged config does not hash to the recorded config_sha256")
    recorded_metrics = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=version.run_id, artifact_path="evaluate/metrics.json",
        dst_path=str(scratch / "recorded"), tracking_uri=client.tracking_uri)).read_text())
    model_dir = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=version.source, dst_path=str(scratch / "registered"),
        tracking_uri=client.tracking_uri))

    # -- re-run -------------------------------------------------------------------------
    config.features.cache_dir = ""  # rebuild the features; never trust a cache here
    (scratch / "config.yaml").write_text(config.to_yaml())
    head, dirty_now = lineage.git_sha(PROJECT_ROOT)
    tree = PROJECT_ROOT
    if head != sha or dirty_now:
        tree = scratch / "checkout"
        _git("worktree", "add", "--detach", str(tree), sha)
        result.note("re-run", f"in a worktree of {sha[:12]} (this checkout is at "
                              f"{(head or '?')[:12]}{', modified' if dirty_now else ''})")
    try:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        done = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", "reproduce", "--corpus", str(corpus),
             "--config", str(scratch / "config.yaml"), "--out", str(scratch / "rerun")],
            cwd=tree, env=env, capture_output=True, text=True)
    finally:
        if tree != PROJECT_ROOT:
            _git("worktree", "remove", "--force", str(tree), check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        result.fail("re-run", f"the steps at {sha[:12]} failed: {last}")
        return result
    rerun = json.loads((scratch / "rerun" / "evaluate" / "metrics.json").read_text())
    manifest_sha = lineage.file_sha256(scratch / "rerun" / "ingest" / "manifest.parquet")
    if manifest_sha == tags.get("manifest_sha256"):
        result.ok("manifest", f"re-ingested manifest has the recorded sha256 {manifest_sha[:12]}")
    else:
        result.fail("manifest", f"re-ingested manifest sha256 {manifest_sha[:12]} differs "
                                f"from the recorded {tags.get('manifest_sha256', '?')[:12]}")
    differing = [k for k in COMPARED if rerun.get(k) != recorded_metrics.get(k)]
    if differing:
        result.fail("metrics", f"differ in {', '.join(differing)}: WA {rerun['wa']:.6f} vs "
                               f"{recorded_metrics['wa']:.6f}, UA {rerun['ua']:.6f} vs "
                               f"{recorded_metrics['ua']:.6f}")
    else:
        result.ok("metrics", f"identical: WA {rerun['wa']:.6f}, UA {rerun['ua']:.6f}, "
                             "per-class, per-session and confusion")
    mismatched = []
    for bundle in sorted((scratch / "rerun" / "train").glob("*/model.pt")):
        fold = bundle.parent.name
        theirs = model_dir / "artifacts" / f"{fold}.pt"
        if not theirs.is_file() or not _same_weights(bundle, theirs):
            mismatched.append(fold)
    if mismatched:
        result.fail("weights", f"retrained weights differ from the registered ones in "
                               f"{', '.join(mismatched)}")
    else:
        result.ok("weights", "retrained weights are bit-identical to the registered model's")
    if keep:
        result.note("files", str(scratch))
    else:
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)
    return result


def _same_weights(a: Path, b: Path) -> bool:
    left = torch.load(a, map_location="cpu", weights_only=True)["state_dict"]
    right = torch.load(b, map_location="cpu", weights_only=True)["state_dict"]
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)
