"""`emoalign audit`: prove where a registered model came from and that it can be rebuilt.

Checks, in order: the recorded commit exists (and the tree was clean when it trained); the
recorded data hash matches `data.dvc` at that commit and the corpus read now; the recorded
config is the one whose hash is on the run. Then the steps run again at that commit (a git
worktree when it differs from the checkout), from the recorded config and seed, on that
data, and the new metrics and weights are compared with the registered ones.

The verdict:
- REPRODUCED: weights and metrics bit-identical, as they must be in the same environment.
- REPRODUCED WITHIN TOLERANCE: the environment differs (other CPU kernels, another GPU), so
  the floats do; UA and WA each lie within half the recorded scores' 95 % bootstrap
  interval (what the test set's luck alone moves them by), and the two models agree on at
  least `min_agreement` of the test utterances.
- NOT REPRODUCED: data, code or config differ, or the scores fall outside the tolerance, or
  the environment matches and the weights still differ. `strict` demands bit-identity.
"""

import copy
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from components import PROJECT_ROOT, environment, lineage, registry
from components.config import tree_sha256
from components.errors import UserError
from components.outputs import Evaluation, StepOutputs, read_json
from components.registry.tracking import CONFIG_ARTIFACT, METRICS_ARTIFACT
from model.metrics import bootstrap_intervals

COMPARED = ("wa", "ua", "per_class", "confusion", "per_session", "n_test")
PREDICTIONS_ARTIFACT = f"evaluate/{Evaluation.PREDICTIONS}"
BOOTSTRAP_SAMPLES = 1000

@dataclass
class Audit:
    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    env_differences: dict = field(default_factory=dict)
    tolerated: list[str] = field(default_factory=list)

    def ok(self, what: str, detail: str) -> None:
        self.lines.append(f"OK        {what}: {detail}")

    def fail(self, what: str, detail: str) -> None:
        self.lines.append(f"MISMATCH  {what}: {detail}")
        self.failures.append(what)

    def note(self, what: str, detail: str) -> None:
        self.lines.append(f"NOTE      {what}: {detail}")

    def tolerate(self, what: str, detail: str) -> None:
        self.lines.append(f"TOLERATED {what}: {detail}")
        self.tolerated.append(what)

    @property
    def verdict(self) -> str:
        if self.failures:
            return f"NOT REPRODUCED ({', '.join(self.failures)})"
        if self.tolerated:
            return ("REPRODUCED WITHIN TOLERANCE: same code, data and config; the environment "
                    f"differs in {', '.join(self.env_differences)}, and so do the floats")
        return "REPRODUCED: same code, data and config rebuild the same model"


@dataclass
class Recorded:
    """What the registry holds of a model: its run's tags, config and metrics, and the
    registered model's files, downloaded into the audit's scratch folder."""

    tags: dict
    config: dict  # the logged config as it was written: the recorded commit's code reads it
    metrics: dict
    predictions: pd.DataFrame
    model_dir: Path

    @property
    def environment(self) -> dict[str, str]:
        return {k: v for k, v in self.tags.items() if k.startswith("env.")}


def _git(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True,
                          text=True, check=check)


def audit(uri: str, corpus: Path | None, workdir: Path, keep: bool = False,
          strict: bool = False, min_agreement: float = environment.MIN_AGREEMENT) -> Audit:
    result = Audit()
    client = registry.connect()
    version = registry.resolve(client, uri)
    tags = client.get_run(version.run_id).data.tags
    result.note("model", f"{version.name} version {version.version} from MLflow run "
                         f"{version.run_id} (pipeline run {tags.get('pipeline_run')})")
    sha = tags.get("git_sha", "unknown")
    if not _check_code(result, sha, tags):
        return result
    corpus = _check_data(result, sha, tags, corpus)
    if corpus is None:
        return result
    # The re-run happens in another working directory (the worktree): absolute paths only.
    scratch = Path(tempfile.mkdtemp(prefix="emoalign-audit-", dir=Path(workdir).resolve()))
    recorded = _download(client, version, tags, scratch)
    if tree_sha256(recorded.config) == tags.get("config_sha256"):
        result.ok("config", f"resolved config matches config_sha256 "
                            f"{tags['config_sha256'][:12]}; seed {recorded.config.get('seed')}")
    else:
        # Whatever a re-run gave, it would not be the recorded settings' model.
        result.fail("config", "the logged config does not hash to the recorded config_sha256; "
                              "nothing was re-run")
        shutil.rmtree(scratch, ignore_errors=True)
        return result
    rerun = _rerun(result, sha, corpus.resolve(), recorded.config, scratch,
                   recorded.environment.get("env.threads", ""))
    if rerun is None:
        return result  # the scratch folder stays, for the re-run's files
    _compare(result, recorded, rerun, strict, min_agreement)
    if keep:
        result.note("files", str(scratch))
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    return result


def _check_code(result: Audit, sha: str, tags: dict) -> bool:
    """Whether the recorded commit is here to re-run."""
    if sha == "unknown" or _git("cat-file", "-e", f"{sha}^{{commit}}", check=False).returncode:
        result.fail("code", f"commit {sha} is not in this repository")
        return False
    if tags.get("git_dirty") == "true":
        result.fail("code", f"commit {sha[:12]} had uncommitted changes when the model was "
                            "trained; what trained it is not recorded")
    else:
        result.ok("code", f"commit {sha[:12]}, clean working tree at training time")
    return True


def _check_data(result: Audit, sha: str, tags: dict, corpus: Path | None) -> Path | None:
    """The corpus to re-run on, when it hashes to the recorded data hash."""
    data_hash = tags.get("data_hash", "")
    shown = _git("show", f"{sha}:data.dvc", check=False)
    pinned = lineage.pointer_md5(shown.stdout) if shown.returncode == 0 else None
    if pinned == data_hash:
        result.ok("data.dvc", f"at {sha[:12]} records {data_hash}")
    else:
        result.note("data.dvc", f"at {sha[:12]} records {pinned}, the model's data hash is "
                                f"{data_hash}: it was trained on another corpus")
    if corpus is None:
        if pinned == data_hash:
            corpus = lineage.DEFAULT_DATA
        elif tags.get("corpus"):
            corpus = Path(tags["corpus"])
        else:
            raise UserError("the model's corpus is not data/ at its commit; pass --corpus")
    from components import iemocap

    try:
        actual, _ = lineage.data_hash(corpus)
    except (FileNotFoundError, iemocap.FormatError) as e:
        raise UserError(f"cannot read the corpus to audit against: {e}") from None
    if actual != data_hash:
        result.fail("data", f"{corpus} hashes to {actual}, the model was trained on "
                            f"{data_hash}; check out that version (`git checkout {sha[:12]} "
                            "-- data.dvc && dvc checkout`) or pass --corpus")
        return None
    result.ok("data", f"{corpus} hashes to {data_hash}")
    return corpus


def _download(client, version, tags: dict, scratch: Path) -> Recorded:
    import mlflow.artifacts

    def artifact(path: str) -> Path:
        return Path(mlflow.artifacts.download_artifacts(
            run_id=version.run_id, artifact_path=path, dst_path=str(scratch / "recorded"),
            tracking_uri=client.tracking_uri))

    model_dir = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=version.source, dst_path=str(scratch / "registered"),
        tracking_uri=client.tracking_uri))
    return Recorded(tags, yaml.safe_load(artifact(CONFIG_ARTIFACT).read_text()),
                    read_json(artifact(METRICS_ARTIFACT)),
                    pd.read_csv(artifact(PREDICTIONS_ARTIFACT)), model_dir)


def _rerun(result: Audit, sha: str, corpus: Path, config: dict, scratch: Path,
           threads: str) -> StepOutputs | None:
    """The steps again, in this process's Python, at the recorded commit, with the thread
    count training had (fanned-out tasks share the cores; the count changes float sums).
    The config goes as logged (the keys that commit's code knows), with those two changes."""
    config = copy.deepcopy(config)
    config["features"]["cache_dir"] = ""  # rebuild the features; never trust a cache here
    if not config["train"].get("threads") and threads.isdigit():
        config["train"]["threads"] = int(threads)
    (scratch / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
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
        return None
    return StepOutputs.of_steps_dir(scratch / "rerun")


def _compare(result: Audit, recorded: Recorded, rerun: StepOutputs, strict: bool,
             min_agreement: float) -> None:
    """Manifest, environment, metrics and weights of the re-run against the recorded ones."""
    manifest_sha = lineage.file_sha256(rerun.ingested.manifest_path)
    if manifest_sha == recorded.tags.get("manifest_sha256"):
        result.ok("manifest", f"re-ingested manifest has the recorded sha256 {manifest_sha[:12]}")
    else:
        wanted = recorded.tags.get("manifest_sha256", "?")
        result.fail("manifest", f"re-ingested manifest sha256 {manifest_sha[:12]} differs "
                                f"from the recorded {wanted[:12]}")
    now = rerun.trained.summary().get("environment", {})
    result.env_differences = environment.differences(recorded.environment, now)
    for key, (then, here) in result.env_differences.items():
        result.note("environment", f"{key} {then!r} when trained, {here!r} in the re-run")
    if not result.env_differences:
        result.ok("environment", f"as recorded: {now.get('env.device')}, "
                                 f"{now.get('env.cpu_capability')} kernels, "
                                 f"{now.get('env.threads')} threads")
    metrics, before = rerun.evaluation.metrics(), recorded.metrics
    differing = [k for k in COMPARED if metrics.get(k) != before.get(k)]
    mismatched = [fold for fold, bundle in rerun.trained.bundles().items()
                  if not _same_weights(bundle, recorded.model_dir / "artifacts" / f"{fold}.pt")]
    if not differing and not mismatched:
        result.ok("metrics", f"identical: WA {metrics['wa']:.6f}, UA {metrics['ua']:.6f}, "
                             "per-class, per-session and confusion")
        result.ok("weights", "retrained weights are bit-identical to the registered model's")
        return
    what = (f"differ in {', '.join(differing) or 'no metric'}; weights differ in "
            f"{', '.join(mismatched) or 'no fold'}")
    exact_expected = not result.env_differences and not _nondeterministic(recorded)
    if strict or exact_expected:
        why = "--strict asks for bit-identity" if strict else (
            "the environment matches, so they should be identical")
        result.fail("metrics", f"{what}: WA {metrics['wa']:.6f} vs {before['wa']:.6f}, "
                               f"UA {metrics['ua']:.6f} vs {before['ua']:.6f} ({why})")
        return
    _judge_within_tolerance(result, recorded, rerun, what, min_agreement)


def _nondeterministic(recorded: Recorded) -> bool:
    """Trained on a GPU without deterministic algorithms: no re-run can match it bit for bit."""
    env = recorded.environment
    return env.get("env.device", "cpu") != "cpu" and env.get("env.deterministic") != "true"


def _judge_within_tolerance(result: Audit, recorded: Recorded, rerun: StepOutputs, what: str,
                            min_agreement: float) -> None:
    """UA and WA within half the recorded scores' 95 % bootstrap interval, and most test
    utterances predicted alike."""
    before, now = recorded.predictions, rerun.evaluation.predictions()
    classes = recorded.metrics["classes"]
    ids = {c: i for i, c in enumerate(classes)}
    intervals = bootstrap_intervals(before["label"].map(ids), before["predicted"].map(ids),
                                    before["session"], len(classes), BOOTSTRAP_SAMPLES)
    paired = before.merge(now, on="utt_id", suffixes=("", "_rerun"), validate="one_to_one")
    agreement = float(np.mean(paired["predicted"] == paired["predicted_rerun"]))
    rerun_metrics, checks = rerun.evaluation.metrics(), []
    for name in ("ua", "wa"):
        low, high = intervals[name]
        tolerance, delta = (high - low) / 2, rerun_metrics[name] - recorded.metrics[name]
        checks.append((abs(delta) <= tolerance,
                       f"{name.upper()} {recorded.metrics[name]:.4f} -> "
                       f"{recorded.metrics[name] + delta:.4f} (|{delta:+.4f}| vs tolerance "
                       f"{tolerance:.4f})"))
    checks.append((agreement >= min_agreement,
                   f"predictions agree on {agreement:.1%} of {len(paired)} test utterances "
                   f"(at least {min_agreement:.0%} asked)"))
    detail = (f"{what}; " + "; ".join(text for _, text in checks) + "; tolerance: half the "
              f"95% bootstrap interval of the recorded scores ({BOOTSTRAP_SAMPLES} resamples "
              "of the test utterances within each test session)")
    if all(ok for ok, _ in checks):
        result.tolerate("metrics", detail)
    else:
        result.fail("metrics", f"outside the tolerance: {detail}")


def _same_weights(a: Path, b: Path) -> bool:
    import torch

    if not b.is_file():
        return False
    left = torch.load(a, map_location="cpu", weights_only=True)["state_dict"]
    right = torch.load(b, map_location="cpu", weights_only=True)["state_dict"]
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)
