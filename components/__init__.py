"""The pipeline's steps, one module each; `outputs` is the contract between them."""

from pathlib import Path

# The folder holding the code: a git checkout (its commit is a run's code version, data/ its
# default corpus, runs/ its local MLflow store), or where an image installed it.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
