"""The typed config: defaults, YAML, --set overrides, and a clear error for every mistake."""

import pytest

from components.config import Config, config_from_yaml, load_config
from components.errors import ConfigError


def test_defaults_are_the_standard_protocol():
    config = load_config()
    assert config.ingest.classes == ["neutral", "happy", "angry", "sad"]
    assert config.ingest.label_map() == {"neu": "neutral", "hap": "happy", "exc": "happy",
                                         "ang": "angry", "sad": "sad"}


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\ningest:\n  merge_excited: false\n")
    config = load_config(path, ["seed=5", "ingest.classes=neutral,sad,angry"])
    assert (config.seed, config.ingest.merge_excited) == (5, False)
    assert config.ingest.classes == ["neutral", "sad", "angry"]
    assert config.ingest.label_map() == {"neu": "neutral", "sad": "sad", "ang": "angry"}


def test_resolved_yaml_round_trips_and_hashes_stably():
    config = load_config(None, ["validate.duration_tolerance_s=0.25"])
    again = config_from_yaml(config.to_yaml())
    assert again == config and again.sha256() == config.sha256()
    assert config.sha256() != Config().sha256()


@pytest.mark.parametrize("overrides, message", [
    (["ingest.merge_excitd=true"], "unknown config key 'ingest.merge_excitd'"),
    (["nope=1"], "unknown config key 'nope'"),
    (["seed=abc"], "'seed' expects an integer"),
    (["ingest.merge_excited=maybe"], "'ingest.merge_excited' expects true or false"),
    (["ingest=3"], "'ingest' is a section"),
    (["ingest.classes=neutral,joy"], "unknown class 'joy'"),
    (["ingest.classes=neutral,sad"], "merge_excited needs 'happy'"),
    (["ingest.classes=neutral,happy,excited"], "contradicts 'excited'"),
    (["seed"], "--set expects key=value"),
    (["sample_corpus.utterances=5"], "at least 11"),
    (["validate.min_duration_s=50"], "below validate.max_duration_s"),
    (["validate.drift.oov_warn=0.5"], "above its _fail threshold"),
    (["validate.min_class_share=0.3"], "more than the classes can all have"),
    (["validate.drift.nope=1"], "unknown config key 'validate.drift.nope'"),
    (["train.validation_speakers=-1"], "train.validation_speakers must be 0 or more"),
    (["train.selection=best"], "train.validation_speakers is 0; set it to 1 or more"),
])
def test_mistakes_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(None, overrides)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)
