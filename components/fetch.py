"""Fetch: where the pipeline reads its corpus from, and that corpus's data hash.

Two ways, the same pipeline:
- a path: a local folder, or on a cluster the corpus volume (IEMOCAP copied there once);
- a DVC repository URL and revision: `data/` as `data.dvc` pins it at that revision, pulled
  from the repository's DVC remote (S3, MinIO, or a folder) into a folder named after its
  hash, reused by later runs, and checked against the pinned hash before any step reads it.
"""

import shutil
import tempfile
from pathlib import Path

import yaml

from components import iemocap, lineage
from components.errors import CorpusError, UserError


class FetchError(UserError):
    """The corpus cannot be fetched or is not the version asked for; says which."""


def pinned_hash(repo: str, rev: str) -> str:
    """The md5 `data.dvc` records at `rev` of `repo`."""
    from dvc.api import DVCFileSystem

    try:
        fs = DVCFileSystem(repo, rev=rev or None)
        with fs.open("data.dvc") as f:
            pointer = yaml.safe_load(f.read())
    except Exception as e:
        raise FetchError(f"cannot read data.dvc at {rev or 'HEAD'} of {repo}: "
                         f"{str(e).splitlines()[0][:200]}") from None
    outs = (pointer or {}).get("outs") or []
    if not outs or not outs[0].get("md5"):
        raise FetchError(f"data.dvc at {rev or 'HEAD'} of {repo} records no md5")
    return outs[0]["md5"]


def run(corpus: str, dvc_repo: str = "", dvc_rev: str = "", data_hash: str = ""
        ) -> tuple[str, str]:
    """(folder holding the corpus, its data hash). `corpus` is the corpus itself, or with
    `dvc_repo` the folder fetched versions are kept in."""
    if not dvc_repo:
        path = Path(corpus)
        try:
            iemocap.find_release_root(path)
        except (FileNotFoundError, iemocap.FormatError) as e:
            raise CorpusError(str(e)) from None
        # A caller that hashed the corpus already (emoalign run) passes the hash in.
        return str(path.resolve()), data_hash or lineage.release_hash(path)

    from dvc.api import DVCFileSystem

    wanted = pinned_hash(dvc_repo, dvc_rev)
    if data_hash and data_hash != wanted:
        raise FetchError(f"data.dvc at {dvc_rev or 'HEAD'} of {dvc_repo} pins {wanted}, "
                         f"the run asked for {data_hash}")
    root = Path(corpus)
    target = root / wanted.removesuffix(".dir")
    if target.is_dir() and lineage.corpus_hash(target / "data") == wanted:
        print(f"corpus {wanted} already fetched to {target}")
        return str(target / "data"), wanted
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".fetch-", dir=root))
    try:
        fs = DVCFileSystem(dvc_repo, rev=dvc_rev or None)
        fs.get("data", str(scratch / "data"), recursive=True)
        got = lineage.corpus_hash(scratch / "data")
        if got != wanted:
            raise FetchError(f"fetched data hashes to {got}, data.dvc pins {wanted}")
        if target.exists():
            shutil.rmtree(target)
        scratch.rename(target)
    except FetchError:
        raise
    except Exception as e:
        raise FetchError(f"cannot fetch data at {dvc_rev or 'HEAD'} of {dvc_repo}: "
                         f"{str(e).splitlines()[0][:200]}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"fetched corpus {wanted} from {dvc_repo}@{dvc_rev or 'HEAD'} to {target}")
    return str(target / "data"), wanted
