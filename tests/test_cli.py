"""The command line as a user meets it: help, outputs, and one-line errors with exit 2."""

import json

from corpora import sample_corpus
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
