"""The bad-input sweep: every user mistake the CLI has been tried with, and what it must
answer: one line naming the thing, exit code 2, never a traceback. `benchmarks/bad_inputs.py`
prints this table with the answers into benchmarks/RESULTS.md."""

import os
from pathlib import Path

import pytest

from conftest import assert_one_line_error, emoalign

# (what, argv with {tmp} for a scratch folder and {corpus} for a valid release, answer part)
CASES = [
    ("corpus path that does not exist", ["run", "--corpus", "{tmp}/nope"], "does not exist"),
    ("corpus path that is a file", ["run", "--corpus", "{tmp}/file.txt"], "{tmp}/file.txt"),
    ("corpus folder that is not IEMOCAP", ["run", "--corpus", "{tmp}/empty"], "Session"),
    ("unknown config key", ["run", "--set", "train.nope=1"], "unknown config key 'train.nope'"),
    ("config value of the wrong type", ["run", "--set", "train.epochs=many"],
     "expects an integer"),
    ("unknown model kind", ["run", "--set", "model.kind=transformer"],
     "config key 'model.kind' must be one of align, speech, text, late_fusion, got "
     "'transformer'"),
    ("unknown protocol", ["run", "--set", "protocol=kfold"],
     "config key 'protocol' must be one of holdout, loso, got 'kfold'"),
    ("number below its range", ["run", "--set", "train.epochs=0"],
     "config key 'train.epochs' must be at least 1, got 0"),
    ("a removed setting that did something", ["run", "--set", "train.guided_attention=0.5"],
     "config key 'train.guided_attention' was removed ("),
    ("--set without =", ["run", "--set", "seed"], "--set expects key=value"),
    ("a setting that is a section", ["run", "--set", "train=3"], "is a section"),
    ("UA floor out of range", ["run", "--set", "registry.ua_floor=2"],
     "config key 'registry.ua_floor' must be in [0, 1], got 2"),
    ("unknown class", ["run", "--set", "ingest.classes=neutral,bored"],
     "config key 'ingest.classes' must be one of neutral, happy, excited, sad, angry, "
     "frustrated, surprised, fearful, disgusted, other, got 'bored'"),
    ("config file that does not exist", ["run", "--config", "{tmp}/missing.yaml"],
     "config file not found"),
    ("config file that is not YAML", ["run", "--config", "{tmp}/bad.yaml"], "not valid YAML"),
    ("config file holding a list", ["run", "--config", "{tmp}/list.yaml"],
     "must hold a mapping"),
    ("too few utterances to generate", ["sample-corpus", "{tmp}/c", "--utterances", "5"],
     "at least 11"),
    ("generating into a folder of other files", ["sample-corpus", "{tmp}/full", "--force"],
     "is not a generated sample corpus"),
    ("ingest of a missing corpus", ["ingest", "--corpus", "{tmp}/nope", "--out", "{tmp}/o"],
     "does not exist"),
    ("validate of a missing manifest", ["validate", "--manifest", "{tmp}/nope.parquet",
                                        "--out", "{tmp}/o"], "nope.parquet"),
    ("features of a missing manifest", ["features", "--manifest", "{tmp}/nope.parquet",
                                        "--out", "{tmp}/o"], "nope.parquet"),
    ("evaluate with a folder that is not a feature store",
     ["evaluate", "--model", "{tmp}/empty", "--store", "{tmp}/empty", "--manifest",
      "{tmp}/nope.parquet", "--out", "{tmp}/o"], "is not a feature store"),
    ("train with a folder that is not a feature store",
     ["train", "--store", "{tmp}/empty", "--manifest", "{tmp}/nope.parquet", "--out",
      "{tmp}/o"], "is not a feature store"),
    ("compile into a folder that does not exist", ["compile", "--out", "{tmp}/no/dir/p.yaml"],
     "does not exist"),
    ("predict with a malformed model URI", ["predict", "--model", "emoalign", "--wav",
                                            "{tmp}/file.txt", "--text", "x"],
     "is not a model URI"),
    ("predict with a model that is not registered", ["predict", "--model",
                                                     "models:/ghost@champion", "--wav",
                                                     "{tmp}/file.txt", "--text", "x"],
     "no registered model named 'ghost'"),
    ("predict with a wav that does not exist", ["predict", "--wav", "{tmp}/nope.wav",
                                                "--text", "x"], "wav file not found"),
    ("predict without input", ["predict"], "give --wav (and --text, or it is recognised), or "
                                           "--batch CSV"),
    ("predict with a batch file that does not exist", ["predict", "--batch", "{tmp}/no.csv"],
     "batch file not found"),
    ("predict with a batch file lacking columns", ["predict", "--batch", "{tmp}/cols.csv"],
     "lacks column(s) wav"),
    ("unknown speech recogniser", ["predict", "--wav", "{tmp}/file.txt", "--set",
                                   "serving.recognizer=whisper"],
     "config key 'serving.recognizer' must be one of pocketsphinx, got 'whisper'"),
    ("promote with no registered model", ["promote", "--version", "1", "--reason", "x"],
     "no registered model named 'emoalign'"),
    ("rollback with no registered model", ["rollback"], "no registered model named"),
    ("history of a model that does not exist", ["history", "--name", "ghost"],
     "no registered model named 'ghost'"),
    ("audit asking more than all predictions to agree",
     ["audit", "models:/ghost/1", "--min-agreement", "2"], "--min-agreement must be in [0, 1]"),
    ("audit of a version that does not exist", ["audit", "models:/ghost/1"],
     "no registered model named 'ghost'"),
    ("schedule with a five-field cron", ["schedule", "--host", "http://127.0.0.1:9",
                                         "--cron", "0 3 * * 1"], "six fields"),
    ("submit with a revision but no repository", ["submit", "--host", "http://127.0.0.1:9",
                                                  "--dvc-rev", "v1"],
     "--dvc-rev needs --dvc-repo"),
    ("register a folder that is not a pipeline run", ["register", "--pipeline-run",
                                                      "{tmp}/empty"],
     "is not a finished local pipeline run"),
    ("webhook that is not http(s)", ["run", "--set", "notify.webhook=ftp://host/hook"],
     "notify.webhook must be an http(s) URL"),
    ("drift reference file that does not exist",
     ["run", "--set", "validate.drift_reference={tmp}/nope.json"],
     "validate.drift_reference: stats file not found: {tmp}/nope.json"),
    ("model card of a version that does not exist", ["card", "models:/ghost/1"],
     "no registered model named 'ghost'"),
]
ENV_CASES = [
    ("tracking server that does not answer", ["run", "--corpus", "{corpus}"],
     {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}, "is unreachable"),
    ("tracking store in a folder that cannot be made", ["history"],
     {"MLFLOW_TRACKING_URI": "sqlite:////proc/emoalign/mlflow.db"},
     "cannot create the MLflow store folder"),
]


def scratch(tmp_path: Path) -> Path:
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("not a corpus\n")
    (tmp_path / "bad.yaml").write_text("train: [unclosed\n")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "thesis.tex").write_text("precious\n")
    (tmp_path / "cols.csv").write_text("transcript\nhello\n")
    return tmp_path


def fill(argv, tmp: Path, corpus: Path | None = None) -> list[str]:
    return [a.replace("{tmp}", str(tmp)).replace("{corpus}", str(corpus)) for a in argv]


@pytest.mark.parametrize("what,argv,answer", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_line_and_exit_2(what, argv, answer, tmp_path):
    tmp = scratch(tmp_path)
    result = emoalign(*fill(argv, tmp))
    assert_one_line_error(result, answer.replace("{tmp}", str(tmp)))
    if what == "generating into a folder of other files":
        assert (tmp / "full" / "thesis.tex").read_text() == "precious\n"  # nothing lost


@pytest.mark.parametrize("what,argv,env,answer", ENV_CASES, ids=[c[0] for c in ENV_CASES])
def test_bad_environment_gets_one_line_and_exit_2(what, argv, env, answer, tmp_path,
                                                 small_corpus):
    result = emoalign(*fill(argv, scratch(tmp_path), small_corpus), env=env)
    assert_one_line_error(result, answer)
    assert "Executing task" not in result.stdout and os.environ.get("MLFLOW_TRACKING_URI")
