"""The pipeline's steps, and what only they share.

The steps, one module each, in the order they run (pipelines/steps.py):
    fetch.py      the corpus (a path, or a DVC revision) and its data hash
    check.py      whether to train at all: data, model code or model settings changed
    ingest.py     an IEMOCAP release -> the manifest
    validate.py   the Great Expectations gate, audio checks, quarantine, drift
    features.py   the manifest's audio -> a feature store
    train.py      one (fold, seed) model
    evaluate.py   a model on its held-out session: WA, UA, confusion, plots
    registry/     MLflow: tracking the run, registering a version, the promotion gate
    notify.py     the alert when a run ends

What they share:
    outputs.py        the contract between them: what each leaves in its output folder
    config.py         the one typed configuration; errors.py, the errors a user causes
    iemocap.py        the IEMOCAP release format, read by ingest (and written by corpora/)
    member.py         one (fold, seed) member run: its config, training, summary, evaluation
    folds.py          the plan of (fold, seed) members; selection.py, which weights one keeps
    feature_store.py  reading a feature store; reporting.py, what the members add up to
    transcripts.py    recognised transcripts (train or evaluate on them), cached by audio hash
    lineage.py        the data hash and the code's commit; environment.py, where it ran
"""

from pathlib import Path

# The folder holding the code: a git checkout (its commit is a run's code version, data/ its
# default corpus, runs/ its local MLflow store), or where an image installed it.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
