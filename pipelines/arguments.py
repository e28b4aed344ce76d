"""The pipeline's arguments, built in one place for every way a run starts: `emoalign run`
(kfp.local), `emoalign submit` and `emoalign schedule` (a cluster), and the benchmarks."""

from components.config import Config
from components.lineage import Lineage


def pipeline_arguments(config: Config, corpus: str, lineage: Lineage | None = None, *,
                       dvc_repo: str = "", dvc_rev: str = "", force: bool = True,
                       champion_reference: str = "") -> dict:
    """The DAG's parameters (pipeline.py) but `protocol` and `seed`, which a recurring run's
    settings may give apart from the config. Without `lineage` (a cluster run) the fetch
    task hashes the data and the image names its commit. `champion_reference`: the
    champion the drift check compares with, when the submitter has resolved it; empty, the
    fetch task resolves it."""
    lineage = lineage or Lineage(corpus, "", "", False)
    return {"corpus": corpus, "config_yaml": config.to_yaml(),
            "data_hash": lineage.data_hash, "git_sha": lineage.git_sha,
            "git_dirty": lineage.git_dirty, "dvc_repo": dvc_repo, "dvc_rev": dvc_rev,
            "force": force, "champion_reference": champion_reference}
