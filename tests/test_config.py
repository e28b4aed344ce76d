"""The typed config: defaults, YAML, --set overrides, and a clear error for every mistake."""

import dataclasses
import re
import typing

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
    (["ingest.classes=neutral,joy"], "config key 'ingest.classes' must be one of neutral, "
                                     "happy, excited, sad, angry, frustrated, surprised, "
                                     "fearful, disgusted, other, got 'joy'"),
    (["ingest.classes=neutral,sad,sad"], "'ingest.classes' must not list a value twice"),
    (["ingest.classes=happy"], "'ingest.classes' must list at least 2 values, got ['happy']"),
    (["ingest.classes=neutral,sad"], "merge_excited needs 'happy'"),
    (["ingest.classes=neutral,happy,excited"], "contradicts 'excited'"),
    (["seed"], "--set expects key=value"),
    (["sample_corpus.utterances=5"], "at least 11"),
    (["validate.min_duration_s=50"], "below validate.max_duration_s"),
    (["validate.drift.oov_warn=0.5"],
     "config key 'validate.drift.oov_warn' must be at most validate.drift.oov_fail (0.2), "
     "got 0.5"),
    (["validate.min_class_share=0.3"], "more than the classes can all have"),
    (["validate.drift.nope=1"], "unknown config key 'validate.drift.nope'"),
    (["train.validation_speakers=-1"],
     "config key 'train.validation_speakers' must be at least 0, got -1"),
    (["train.selection=best"], "train.validation_speakers is 0; set it to 1 or more"),
    (["model.cell=rnn"], "config key 'model.cell' must be one of lstm, gru, got 'rnn'"),
    (["model.attention=cosine"],
     "config key 'model.attention' must be one of additive, dot, multihead, got 'cosine'"),
    (["model.attention_heads=0"], "config key 'model.attention_heads' must be at least 1"),
    (["model.attention=multihead", "model.hidden=10"],
     "model.attention_heads (8) must divide 2 * model.hidden (20)"),
    (["model.word_pooling=mean"],
     "config key 'model.word_pooling' must be one of max, attention, got 'mean'"),
    (["model.frame_projection=-1"], "config key 'model.frame_projection' must be at least 0"),
    (["model.max_words=-5"], "config key 'model.max_words' must be at least 0, got -5"),
    (["model.unknown_word_init=zeros"],
     "config key 'model.unknown_word_init' must be one of normal, uniform, got 'zeros'"),
    (["features.kind=mel"], "config key 'features.kind' must be one of mfcc, spectrum, "
                            "got 'mel'"),
    (["features.pre_emphasis=1.0"],
     "config key 'features.pre_emphasis' must be in [0, 1), got 1.0"),
    (["features.max_seconds=-1"], "config key 'features.max_seconds' must be at least 0"),
    # The diagonal prior: words and frames of one span, and no token that takes no time.
    (["model.max_words=20"], "model.alignment_prior=0.05 needs words and frames of the same "
                             "span, which model.max_words=20 cut apart"),
    (["features.max_seconds=7"], "which features.max_seconds=7.0 cut apart"),
    (["model.punctuation_tokens=true"], "where punctuation takes no time: set "
                                        "model.punctuation_tokens=false"),
    (["model.free_view=true", "model.alignment_prior=0"], "model.free_view adds a view of "
     "the speech without the diagonal prior to the view with it, and model.alignment_prior "
     "is 0"),
    (["model.free_view=true", "model.attention=multihead"], "model.free_view works with "
     "additive or dot attention, not multihead"),
    (["model.predict_with_heads=true", "train.unimodal_loss=0"], "model.predict_with_heads "
     "averages the speech and text heads, which train.unimodal_loss=0 leaves out"),
    (["model.residual_fusion=true", "train.unimodal_loss=0"], "model.residual_fusion adds "
     "the speech and text heads' logits, which train.unimodal_loss=0 leaves out"),
    (["model.residual_fusion=true", "model.predict_with_heads=true"], "two ways of "
     "predicting with the heads: choose one"),
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
    (["model.kind=3"], "'model.kind' must be one of align, speech, text, late_fusion, got 3"),
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
    config = load_config(path, ["train.seeds=3", "train.modality_dropout=5E-1"])
    assert (config.train.lr, config.train.grad_clip) == (0.001, 2.0)
    assert isinstance(config.train.grad_clip, float)
    assert (config.train.seeds, config.train.modality_dropout) == ([3], 0.5)
    assert load_config(None, ["train.seeds=null"]).train.seeds is None


def config_keys(cls: type = Config, prefix: str = ""):
    """(dotted key, field, declared type) of every key, the sections included."""
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        yield prefix + f.name, f, hints[f.name]
        if dataclasses.is_dataclass(hints[f.name]):
            yield from config_keys(hints[f.name], f"{prefix}{f.name}.")


def choices_of(hint) -> tuple:
    """The choices a Literal key (or a list of them) declares; () for any other key."""
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) is list:
        hint = typing.get_args(hint)[0]
    return typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else ()


def test_every_key_has_its_default_and_help_in_one_place():
    """A key is one field of components/config.py (or model/spec.py, for the settings a
    trained model keeps): its type, default and help. Every key, section or setting, has
    help, a choice's help names each choice, and the generated YAML shows it all."""
    from components.config import defaults_yaml

    keys = list(config_keys())
    assert not [key for key, f, _ in keys if not f.metadata.get("help")]
    unnamed = [(key, c) for key, f, hint in keys for c in choices_of(hint)
               if not re.search(rf"\b{c}\b", f.metadata["help"])]
    assert not unnamed
    text = defaults_yaml()
    missing = [f.metadata["help"] for _, f, _ in keys
               if " ".join(f.metadata["help"].split())[:30] not in " ".join(
                   line.split("# ", 1)[-1] for line in text.splitlines())]
    assert not missing, missing


# Every choice, written out by hand: a Literal with a typo in components/config.py or
# model/spec.py would refuse the value the rest of the code asks for, and fail here.
CHOICES = {
    "protocol": ["holdout", "loso"],
    "ingest.classes": ["neutral", "happy", "excited", "sad", "angry", "frustrated",
                       "surprised", "fearful", "disgusted", "other"],
    "ingest.subset": ["all", "improvised", "scripted"],
    "features.kind": ["mfcc", "spectrum"],
    "features.dtype": ["float16", "float32"],
    "features.normalization": ["speaker", "global", "none"],
    "model.kind": ["align", "speech", "text", "late_fusion"],
    "model.attention": ["additive", "dot", "multihead"],
    "model.cell": ["lstm", "gru"],
    "model.word_pooling": ["max", "attention"],
    "model.unknown_word_init": ["normal", "uniform"],
    "train.lr_schedule": ["cosine", "constant"],
    "train.selection": ["average", "best"],
    "train.device": ["auto", "cpu", "cuda"],
    "train.transcripts": ["gold", "asr"],
    "evaluate.transcripts": ["gold", "asr"],
    "serving.recognizer": ["pocketsphinx"],
}
# What a choice needs beside it (rules between keys).
NEEDS = {"ingest.classes": ["ingest.merge_excited=false"],
         "train.selection": ["train.validation_speakers=1"]}


def test_the_choices_are_the_literal_keys():
    declared = {key: choices_of(hint) for key, _, hint in config_keys() if choices_of(hint)}
    assert {key: sorted(c) for key, c in declared.items()} == {
        key: sorted(c) for key, c in CHOICES.items()}


@pytest.mark.parametrize("key", sorted(CHOICES))
def test_each_choice_loads_and_no_other_value_does(key):
    def setting(value: str) -> str:
        # A class set needs two classes; each choice goes with another.
        return f"{key}={value},{'sad' if value != 'sad' else 'neutral'}" \
            if key == "ingest.classes" else f"{key}={value}"

    for choice in CHOICES[key]:
        config = load_config(None, [setting(choice), *NEEDS.get(key, [])])
        for part in key.split("."):
            config = getattr(config, part)
        assert choice == (config[0] if key == "ingest.classes" else config)
    with pytest.raises(ConfigError) as refused:
        load_config(None, [setting("nope"), *NEEDS.get(key, [])])
    assert str(refused.value) == (f"config key {key!r} must be one of "
                                  f"{', '.join(CHOICES[key])}, got 'nope'")


@pytest.mark.parametrize("overrides, message", [
    (["train.epochs=0"], "config key 'train.epochs' must be at least 1, got 0"),
    (["train.lr=0"], "config key 'train.lr' must be above 0, got 0"),
    (["features.f0_max=2001"], "config key 'features.f0_max' must be at most 2000, got 2001"),
    (["model.dropout=1"], "config key 'model.dropout' must be in [0, 1), got 1"),
    (["model.dropout=-0.1"], "config key 'model.dropout' must be in [0, 1), got -0.1"),
    (["registry.ua_floor=1.5"], "config key 'registry.ua_floor' must be in [0, 1], got 1.5"),
    (["holdout_session=0"], "config key 'holdout_session' must be in [1, 5], got 0"),
    (["train.parallelism=0"], "config key 'train.parallelism' must be at least 1, got 0"),
    (["train.seeds=2,-1"], "config key 'train.seeds' must be at least 0, got -1"),
    (["train.seeds="], "config key 'train.seeds' must list at least 1 value, got []"),
    (["train.seeds=1,2,1"], "config key 'train.seeds' must not list a value twice, got "
                            "[1, 2, 1]"),
    (["registry.experiment= "], "config key 'registry.experiment' must not be empty, got ''"),
    (["features.f0_min=600"], "config key 'features.f0_min' must be below features.f0_max "
                              "(500.0), got 600.0"),
    (["features.hop_ms=30"], "config key 'features.hop_ms' must be at most features.win_ms "
                             "(25.0), got 30.0"),
])
def test_a_value_out_of_range_names_the_key_and_the_range(overrides, message):
    """One of each kind of constraint: ge, gt, le, an interval open or closed at its top, on
    a key that may be null, on a list's items, a list's length, a predicate, and the pairs
    of keys that must keep their order."""
    with pytest.raises(ConfigError) as refused:
        load_config(None, overrides)
    assert str(refused.value) == message


def test_the_edges_of_a_range_are_in_it():
    config = load_config(None, ["train.epochs=1", "train.lr=1e-9", "features.f0_max=2000",
                                "model.dropout=0", "registry.ua_floor=1", "holdout_session=1",
                                "features.hop_ms=25", "train.seeds=0"])
    assert (config.train.epochs, config.model.dropout, config.registry.ua_floor) == (1, 0, 1)


def test_a_range_reads_as_words():
    from annotated_types import Interval, Lt

    from components.config import _range_words

    assert _range_words(typing.Annotated[float, Lt(1)], {}) == "below 1"
    assert _range_words(typing.Annotated[float, Interval(gt=0, le=1)], {}) == "in (0, 1]"
    assert _range_words(int, {"ge": 3}) == "at least 3"  # no metadata: pydantic's bound


# The removed keys as `emoalign run` logged them (config.resolved.yaml) until they went.
BEFORE_REMOVAL = {"validate": {"sample_rate": 16000},
                  "train": {"guided_attention": 0.0, "guided_attention_width": 0.2,
                            "guided_attention_fade": 0.5, "time_masks": 0,
                            "time_mask_share": 0.1, "feature_masks": 0,
                            "feature_mask_width": 4}}


def test_a_config_logged_before_keys_were_removed_loads_as_it_ran(tmp_path):
    """`emoalign register` and `emoalign audit` read logged configs again."""
    import yaml

    from components.config import REMOVED, tree_sha256

    logged = Config().to_dict()
    for name, keys in BEFORE_REMOVAL.items():
        logged[name].update(keys)
    assert {f"{name}.{key}" for name, keys in BEFORE_REMOVAL.items() for key in keys} == set(
        REMOVED)
    text = yaml.safe_dump(logged, sort_keys=False)
    assert config_from_yaml(text) == Config()
    (tmp_path / "old.yaml").write_text(text)
    assert load_config(tmp_path / "old.yaml") == Config()
    # Widths and shares did nothing while their weight or count was 0, whatever they held.
    assert load_config(None, ["train.guided_attention_width=0.9", "train.time_mask_share=0.5",
                              "train.feature_mask_width=1", "train.time_masks=0",
                              "train.guided_attention=0", "validate.sample_rate=16000"]
                       ) == Config()
    # The audit hashes the tree as logged, removed keys and all: the hash the run recorded.
    assert tree_sha256(yaml.safe_load(text)) == tree_sha256(logged) != Config().sha256()


@pytest.mark.parametrize("override, why", [
    ("train.guided_attention=0.5", "the guided-attention loss changed nothing measurable"),
    ("train.time_masks=2", "masking the speech features helped no model kind"),
    ("train.feature_masks=1", "masking the speech features helped no model kind"),
    ("validate.sample_rate=8000", "features are extracted at 16000 Hz only"),
])
def test_a_removed_key_set_to_do_something_is_refused_saying_why(override, why):
    key, value = override.split("=")
    with pytest.raises(ConfigError) as refused:
        load_config(None, [override])
    message = str(refused.value)
    assert message.startswith(f"config key {key!r} was removed ({why}")
    assert message.endswith(f"got {value}") and "\n" not in message


def test_every_key_says_whether_it_shapes_the_model():
    """Each key's one declaration says whether it shapes the trained model (what a scheduled
    retrain compares with the champion's): `setting(..., shapes_model=...)` has no default,
    and no key is declared otherwise."""
    from components.config import key_marks, model_shaping_keys
    from model.spec import setting

    marks = key_marks()
    assert set(marks) == {key for key, f, hint in config_keys()
                          if not dataclasses.is_dataclass(hint)}
    assert not [key for key, shapes in marks.items() if not isinstance(shapes, bool)]
    operational = {"train.threads", "train.parallelism", "validate.workers",
                   "features.workers", "features.cache_dir", "features.content_hash",
                   "validate.strict", "validate.drift_reference", "notify.webhook",
                   "validate.min_class_share", "validate.max_quarantined_share"}
    operational |= {k for k in marks if k.startswith(("registry.", "sample_corpus.",
                                                      "validate.drift.", "evaluate.",
                                                      "serving."))}
    assert set(marks) - set(model_shaping_keys()) == operational
    shaping = {"seed", "protocol", "holdout_session", "ingest.classes", "train.lr",
               "train.seeds", "train.device", "train.bf16", "train.deterministic",
               "validate.min_duration_s", "features.n_mfcc", "features.dtype", "model.kind"}
    assert shaping <= set(model_shaping_keys())
    with pytest.raises(TypeError, match="shapes_model"):
        setting(1, "a key that says neither")
