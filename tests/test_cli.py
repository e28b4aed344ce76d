"""The command line as a user meets it: help, outputs, and one-line errors with exit 2."""

import json
import os
import platform
import subprocess
import sys

import pytest

from corpora import sample_corpus
from components import environment
from components.outputs import Ingested
from conftest import assert_one_line_error, emoalign, truth_of


def test_help_lists_the_commands():
    result = emoalign("--help")
    assert result.returncode == 0
    for command in ("run", "sample-corpus", "ingest", "compile"):
        assert command in result.stdout
    for command in ("run", "sample-corpus", "ingest", "compile"):
        assert emoalign(command, "--help").returncode == 0


def test_sample_corpus_then_ingest(tmp_path):
    corpus = tmp_path / "release"
    result = emoalign("sample-corpus", corpus, "--utterances", 30, "--seed", 3)
    assert result.returncode == 0, result.stderr
    assert "wrote 30 utterances" in result.stdout
    truth = truth_of(corpus)
    assert truth["seed"] == 3 and truth["n_utterances"] == 30

    out = tmp_path / "out"
    result = emoalign("ingest", "--corpus", corpus, "--out", out)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / Ingested.REPORT).read_text())
    assert report["counts"]["label_raw"] == truth["counts"]["code"]
    # The printed table: one row per class with its total, and the code counts.
    for label, n in truth["counts"]["class4"].items():
        row = next(x for x in result.stdout.splitlines() if x.startswith(label + " "))
        assert row.split()[-1] == str(n)
    assert "codes: " + ", ".join(f"{k} {v}" for k, v in truth["counts"]["code"].items()) in (
        result.stdout)


def test_sample_corpus_never_overwrites_by_accident(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "Session1").mkdir()
    assert_one_line_error(emoalign("sample-corpus", precious), "not empty", "--force")
    assert_one_line_error(emoalign("sample-corpus", precious, "--force"),
                          "not a generated sample corpus")
    assert (precious / "Session1").is_dir()

    generated = tmp_path / "generated"
    sample_corpus.generate(generated, 20, seed=1)
    result = emoalign("sample-corpus", generated, "--utterances", 15, "--force")
    assert result.returncode == 0, result.stderr
    assert truth_of(generated)["n_utterances"] == 15
    assert len(list(generated.glob("Session*/sentences/wav/*/*.wav"))) == 15
    assert_one_line_error(emoalign("sample-corpus", tmp_path / "x", "--utterances", 5),
                          "--utterances must be at least 11")


def test_ingest_bad_corpus_paths(tmp_path):
    assert_one_line_error(emoalign("ingest", "--corpus", tmp_path / "nowhere", "--out",
                                   tmp_path / "o"), "does not exist", "nowhere")
    assert_one_line_error(emoalign("ingest", "--corpus", tmp_path, "--out", tmp_path / "o"),
                          "not an IEMOCAP release")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert_one_line_error(emoalign("ingest", "--corpus", a_file, "--out", tmp_path / "o"),
                          "not a folder")


def test_bad_config_key_on_the_command_line(small_corpus, tmp_path):
    assert_one_line_error(
        emoalign("ingest", "--corpus", small_corpus, "--out", tmp_path, "--set", "ingest.x=1"),
        "unknown config key 'ingest.x'")
    assert_one_line_error(
        emoalign("run", "--corpus", small_corpus, "--workdir", tmp_path, "--set", "sed=1"),
        "unknown config key 'sed'")
    assert_one_line_error(
        emoalign("ingest", "--corpus", small_corpus, "--out", tmp_path, "--config",
                 tmp_path / "none.yaml"), "config file not found")


# The command line with each command's work replaced by a report of the process: how often
# the program started, and the GLIBC_TUNABLES it runs with. (Not read from /proc/self/environ:
# glibc 2.36 cuts the variable short there as it parses it, and keeps a whole copy in environ.)
STARTED_WITH = """
import os, sys
from pipelines import cli
print("started", flush=True)
def reporter():
    def report(args):
        print("GLIBC_TUNABLES", os.environ.get("GLIBC_TUNABLES", "<unset>"))
        return 0
    return report
cli.cmd_train, cli.cmd_reproduce, cli.cmd_audit = reporter(), reporter(), reporter()
cli.cmd_features = reporter()
sys.exit(cli.main())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc alone")
def test_commands_that_train_here_start_again_with_the_training_allocator():
    """`emoalign train | reproduce | audit` train in their own process: started without
    glibc's malloc settings for training, they start again with them, once. Other commands
    do not; and an operator's own setting of when memory goes back is left alone."""
    ours = ":".join(f"{k}={v}" for k, v in environment.TRAINING_TUNABLES.items())
    clean = {k: v for k, v in os.environ.items()
             if k != "GLIBC_TUNABLES" and not k.startswith("MALLOC_")}

    def run(*args, **env):
        done = subprocess.run([sys.executable, "-c", STARTED_WITH, *args],
                              env={**clean, **env}, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.count("started"), done.stdout.split("GLIBC_TUNABLES ")[1].strip()

    paths = ["--store", "s", "--manifest", "m", "--out", "o"]
    assert run("train", *paths) == (2, ours)
    assert run("reproduce", "--corpus", "c", "--out", "o") == (2, ours)
    assert run("audit", "models:/emoalign/1") == (2, ours)
    assert run("train", *paths, GLIBC_TUNABLES="glibc.cpu.x86_ibt=on") == (
        2, f"glibc.cpu.x86_ibt=on:{ours}")
    assert run("train", *paths, MALLOC_TOP_PAD_="0") == (1, "<unset>")
    assert run("train", *paths, GLIBC_TUNABLES="glibc.malloc.trim_threshold=0") == (
        1, "glibc.malloc.trim_threshold=0")
    assert run("features", "--manifest", "m", "--out", "o") == (1, "<unset>")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc alone")
def test_a_command_forked_from_a_server_started_with_the_allocator_does_not_start_again(
        tmp_path):
    """glibc read its settings when the warm server started (conftest starts it with them):
    a command forked from it already allocates so, whatever its own environment says."""
    from pipelines import warm_server

    (tmp_path / "started_with.py").write_text(STARTED_WITH)
    clean = {k: v for k, v in os.environ.items()
             if k != "GLIBC_TUNABLES" and not k.startswith("MALLOC_")}
    out = tmp_path / "out"
    code = warm_server.run(os.environ[warm_server.ADDRESS_VARIABLE], "started_with",
                           ["audit", "models:/emoalign/1"],
                           {**clean, "PYTHONPATH": str(tmp_path)}, tmp_path, out, out)
    assert code == 0, out.read_text()
    assert out.read_text().count("started") == 1
