"""The fetch step: a corpus path as it is, or a DVC-pinned corpus pulled from a real DVC
repository and remote (a local folder standing in for S3/MinIO)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from components import fetch, lineage
from components.errors import CorpusError

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}


def _sh(*args, cwd):
    done = subprocess.run(list(map(str, args)), cwd=cwd, env=GIT_ENV, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout


@pytest.fixture(scope="module")
def dvc_repo(small_corpus, tmp_path_factory):
    """A git + DVC repository whose data.dvc pins the small corpus at tag v1, pushed to a
    folder remote; v2 pins the corpus with one wav removed."""
    work = tmp_path_factory.mktemp("dvc")
    repo, remote = work / "repo", work / "remote"
    repo.mkdir()
    dvc = [sys.executable, "-m", "dvc"]
    _sh("git", "init", "-q", "-b", "main", cwd=repo)
    _sh(*dvc, "init", "-q", cwd=repo)
    _sh(*dvc, "config", "core.analytics", "false", cwd=repo)
    _sh(*dvc, "remote", "add", "-d", "store", str(remote), cwd=repo)
    shutil.copytree(small_corpus, repo / "data" / "IEMOCAP_full_release")
    _sh(*dvc, "add", "-q", "data", cwd=repo)
    _sh(*dvc, "push", "-q", cwd=repo)
    _sh("git", "add", "-A", cwd=repo)
    _sh("git", "commit", "-qm", "v1", cwd=repo)
    _sh("git", "tag", "v1", cwd=repo)
    v1 = lineage.dvc_pointer_hash(repo / "data.dvc")
    next((repo / "data").rglob("*.wav")).unlink()
    _sh(*dvc, "add", "-q", "data", cwd=repo)
    _sh(*dvc, "push", "-q", cwd=repo)
    _sh("git", "commit", "-qam", "v2", cwd=repo)
    _sh("git", "tag", "v2", cwd=repo)
    # The working copy no longer holds the data: a fetch must come from the remote.
    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / ".dvc" / "cache")
    return {"repo": repo, "remote": remote, "v1": v1,
            "v2": lineage.dvc_pointer_hash(repo / "data.dvc")}


def test_a_path_is_read_as_it_is(small_corpus):
    folder, digest = fetch.run(str(small_corpus))
    assert Path(folder) == small_corpus.resolve()
    assert digest == lineage.release_hash(small_corpus)
    assert fetch.run(str(small_corpus), data_hash="given")[1] == "given"
    with pytest.raises(CorpusError, match="does not exist"):
        fetch.run(str(small_corpus.parent / "nowhere"))


def test_one_corpus_has_one_data_hash_whichever_way_it_comes(dvc_repo, small_corpus,
                                                             tmp_path, monkeypatch):
    """Its release root or the folder holding it (with other things beside it, under another
    name), through `emoalign run`'s lineage or a fetch task given no hash, or as the DVC
    revision that pins it: one hash, the one `lineage.release_hash` computes."""
    one = lineage.release_hash(small_corpus)
    elsewhere = tmp_path / "shelf" / "my-copy"
    shutil.copytree(small_corpus, elsewhere)
    (tmp_path / "shelf" / "notes.txt").write_text("not the corpus")
    parent = tmp_path / "holder"
    shutil.copytree(small_corpus, parent / "IEMOCAP_full_release")
    (parent / "README").write_text("also not the corpus")
    for corpus in (small_corpus, small_corpus.parent, elsewhere, parent):
        assert lineage.data_hash(corpus)[0] == one, corpus
        assert fetch.run(str(corpus))[1] == one, corpus
    assert fetch.run(str(tmp_path / "volume"), str(dvc_repo["repo"]), "v1")[1] == one
    # data/ as `emoalign run` reads it by default: the md5 data.dvc records.
    data = tmp_path / "checkout" / "data"
    shutil.copytree(small_corpus, data / "IEMOCAP_full_release")
    monkeypatch.setattr(lineage, "DEFAULT_DATA", data)
    monkeypatch.setattr(lineage, "DVC_POINTER", dvc_repo["repo"] / "data.dvc")  # pins v2
    assert lineage.data_hash(data) == (one, f"data/ differs from data.dvc ({dvc_repo['v2']}); "
                                            "run `dvc add data` to record this version")
    assert lineage.corpus_hash(data) == one  # DVC's own hash of data/
    # A different corpus, a different hash.
    next(elsewhere.rglob("*.wav")).unlink()
    assert lineage.release_hash(elsewhere) != one


def test_a_dvc_revision_is_pulled_from_the_remote_and_checked(dvc_repo, small_corpus,
                                                              tmp_path, capsys):
    volume = tmp_path / "volume"
    folder, digest = fetch.run(str(volume), str(dvc_repo["repo"]), "v1")
    assert digest == dvc_repo["v1"] == lineage.corpus_hash(small_corpus.parent)
    assert lineage.corpus_hash(Path(folder)) == digest
    assert (Path(folder) / "IEMOCAP_full_release" / "Session1").is_dir()
    # Fetched versions are kept by hash and reused.
    assert fetch.run(str(volume), str(dvc_repo["repo"]), "v1") == (folder, digest)
    assert "already fetched" in capsys.readouterr().out
    folder2, digest2 = fetch.run(str(volume), str(dvc_repo["repo"]), "v2")
    assert digest2 == dvc_repo["v2"] != digest and folder2 != folder
    assert not list(volume.glob(".fetch-*"))  # no half-fetched folder left behind


def test_a_dvc_fetch_that_cannot_be_trusted_is_a_clear_error(dvc_repo, tmp_path):
    with pytest.raises(fetch.FetchError, match="pins .* the run asked for"):
        fetch.run(str(tmp_path / "v"), str(dvc_repo["repo"]), "v1", data_hash="other.dir")
    with pytest.raises(fetch.FetchError, match="cannot read data.dvc at nope"):
        fetch.run(str(tmp_path / "v"), str(dvc_repo["repo"]), "nope")
    broken = tmp_path / "remote-copy"
    shutil.copytree(dvc_repo["remote"], broken)
    repo = tmp_path / "repo"
    shutil.copytree(dvc_repo["repo"], repo)
    _sh(sys.executable, "-m", "dvc", "remote", "modify", "store", "url", str(broken), cwd=repo)
    _sh("git", "commit", "-qam", "remote moved", cwd=repo)
    blobs = [b for b in (broken / "files" / "md5").rglob("*")
             if b.is_file() and not b.name.endswith(".dir")]
    assert len(blobs) > 5
    for blob in blobs[:5]:
        blob.unlink()
    with pytest.raises(fetch.FetchError, match="cannot fetch data"):
        fetch.run(str(tmp_path / "v2"), str(repo), "main")
    assert not list((tmp_path / "v2").glob("*/data"))


def test_the_fetch_task_resolves_the_champion_unless_its_submitter_did(small_corpus,
                                                                         tracking_store):
    """On a cluster fetch asks the registry for the champion the drift check compares with;
    `emoalign run` asks it itself (it holds a connection already) and passes the answer."""
    from mlflow import MlflowClient

    from components.config import load_config
    from pipelines import kfp_components

    config = load_config()
    assert config.validate.drift_reference == "champion"
    task = dict(corpus=str(small_corpus), dvc_repo="", dvc_rev="", data_hash="",
                git_sha="0" * 40, git_dirty=False, config_yaml=config.to_yaml(), protocol="",
                seed=-1)
    assert kfp_components.fetch.python_func(**task).drift_reference == \
        "no drift check: no champion yet"
    client = MlflowClient(tracking_store)
    name = config.registry.model_name
    client.create_registered_model(name)
    client.create_model_version(name, source=str(small_corpus))
    client.create_model_version(name, source=str(small_corpus))
    client.set_registered_model_alias(name, "champion", "2")
    assert kfp_components.fetch.python_func(**task).drift_reference == f"models:/{name}/2"
    # What the submitter resolved is taken as it is: the registry is not asked again.
    submitted = kfp_components.fetch.python_func(**task, champion_reference=f"models:/{name}/1")
    assert submitted.drift_reference == f"models:/{name}/1"
    # A config naming no champion keeps its own reference whatever was submitted.
    own = load_config(overrides=["validate.drift_reference=none"])
    assert kfp_components.fetch.python_func(
        **{**task, "config_yaml": own.to_yaml()},
        champion_reference=f"models:/{name}/1").drift_reference == "none"
