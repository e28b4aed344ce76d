"""The typed config: defaults, YAML, --set overrides, and a clear error for every mistake."""

import re

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
    (["model.cell=rnn"], "model.cell must be lstm or gru, got 'rnn'"),
    (["model.attention=cosine"], "model.attention must be additive, dot or multihead"),
    (["model.attention_heads=0"], "model.attention_heads must be at least 1"),
    (["model.attention=multihead", "model.hidden=10"],
     "model.attention_heads (8) must divide 2 * model.hidden (20)"),
    (["model.word_pooling=mean"], "model.word_pooling must be max or attention"),
    (["model.frame_projection=-1"], "model.frame_projection must be 0 or more"),
    (["model.max_words=-5"], "model.max_words must be 0 or more"),
    (["model.unknown_word_init=zeros"], "model.unknown_word_init must be normal or uniform"),
    (["features.kind=mel"], "features.kind must be mfcc or spectrum, got 'mel'"),
    (["features.pre_emphasis=1.0"], "features.pre_emphasis must be in [0, 1)"),
    (["features.max_seconds=-1"], "features.max_seconds must be 0"),
])
def test_mistakes_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, overrides)


def test_the_authors_recipe_preset_sets_only_keys_that_exist():
    """configs/xu2019.yaml: every key it sets is a config key, and the config holds its
    value; multihead attention and the spectrum need nothing more."""
    from components.config import PROJECT_ROOT, _read_yaml

    path = PROJECT_ROOT / "configs" / "xu2019.yaml"
    config = load_config(path, [])

    def leaves(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield prefix + key, value

    for dotted, value in leaves(_read_yaml(path.read_text())):
        node = config
        for part in dotted.split("."):
            node = getattr(node, part)
        assert node == value, dotted
    assert config.features.spec().dim == 257
    assert (config.model.hidden, config.model.attention_heads) == (100, 8)
    assert "exc" not in config.ingest.label_map()
    tiny = load_config(path, ["model.hidden=6", "model.attention_heads=4"])
    assert tiny.model.attention_heads == 4


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


@pytest.mark.parametrize("overrides, message", [
    (["seed=true"], "'seed' expects an integer, got True"),
    (["train.epochs=3.0"], "'train.epochs' expects an integer, got 3.0"),
    (["train.lr=fast"], "'train.lr' expects a number, got 'fast'"),
    (["model.kind=3"], "'model.kind' expects text, got 3"),
    (["train.seeds=0,x"], "'train.seeds' expects an integer, got 'x'"),
    (["train.bucketing=1"], "'train.bucketing' expects true or false, got 1"),
])
def test_types_are_strict(overrides, message):
    """No silent coercion: a boolean is not a number, text is not a number, 3.0 is not 3."""
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(None, overrides)


def test_numbers_read_as_users_write_them(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-3\n  grad_clip: 2\n")
    config = load_config(path, ["train.seeds=3", "train.guided_attention=5E-1"])
    assert (config.train.lr, config.train.grad_clip) == (0.001, 2.0)
    assert isinstance(config.train.grad_clip, float)
    assert (config.train.seeds, config.train.guided_attention) == ([3], 0.5)
    assert load_config(None, ["train.seeds=null"]).train.seeds is None


def test_every_key_has_its_default_and_help_in_one_place():
    """A key is one field of components/config.py (or model/spec.py, for the settings a
    trained model keeps): its type, default and help. The generated YAML shows the help."""
    import dataclasses
    import typing

    from components.config import defaults_yaml

    def keys(cls, prefix=""):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                yield from keys(hints[f.name], f"{prefix}{f.name}.")
            else:
                yield prefix + f.name, f.metadata.get("help", "")

    helped = [help_text for _, help_text in keys(Config) if help_text]
    assert len(helped) > 50
    text = defaults_yaml()
    missing = [h for h in helped if " ".join(h.split())[:30] not in " ".join(
        line.split("# ", 1)[-1] for line in text.splitlines())]
    assert not missing, missing
