"""Training and evaluation: reproducible, resumable after a crash, measured as the field
measures, with clear errors, and fusion that really uses both modalities."""

import contextlib
import json
import platform
import resource

import numpy as np
import pandas as pd
import pytest
import torch

from components import environment, evaluate, member, outputs, train
from components.config import load_config
from conftest import TINY, assert_one_line_error, emoalign


def config(*overrides):
    return load_config(None, [*TINY, *overrides])


def weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


def test_same_inputs_same_model_and_metrics(prepared, tmp_path, monkeypatch):
    """Twice the same model; the second time with glibc's allocator left as it is, since
    where memory comes from must not change the arithmetic."""
    cfg = config()
    for name in ("a", "b"):
        if name == "b":
            monkeypatch.setattr(environment, "allocator_keeps_freed_memory",
                                contextlib.nullcontext)
        member.train_all(prepared["store"], prepared["validated"], tmp_path / name, cfg)
        evaluate.run(tmp_path / name, prepared["store"], prepared["validated"],
                     tmp_path / f"eval_{name}", cfg)
    wa, wb = (weights(tmp_path / n / "session5-seed0" / "model.pt") for n in ("a", "b"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ma, mb = (json.loads((tmp_path / f"eval_{n}" / "metrics.json").read_text())
              for n in ("a", "b"))
    assert ma == mb
    other = config("seed=1")
    member.train_all(prepared["store"], prepared["validated"], tmp_path / "c", other)
    wc = weights(tmp_path / "c" / "session5-seed1" / "model.pt")
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc alone")
def test_memory_freed_while_training_is_reused_without_faulting_it_back_in():
    """Steps like a training step, tensors of several sizes alive at once and freed: glibc
    gives their memory back each step and faults it in anew; while training it keeps it
    (the page faults that were 8 of the default run's 20 s of training)."""

    def page_faults(steps: int) -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(steps):
            scores = torch.ones(40 * 2**18)  # 40 MiB, every page written
            features = torch.ones(20 * 2**18)
            hidden, pooled = scores.tanh(), features[:10 * 2**18] * 2
            del scores, features, hidden, pooled
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    by_default = page_faults(5)
    with environment.allocator_keeps_freed_memory():
        page_faults(5)  # the heap grows to what a step needs
        while_training = page_faults(5)
    assert while_training < by_default / 4, (while_training, by_default)
    assert page_faults(5) > by_default / 4  # glibc's defaults are back


def test_resume_after_a_crash_mid_epoch_gives_the_same_model(prepared, tmp_path,
                                                             monkeypatch):
    cfg = config("train.epochs=4", "train.patience=10")
    member.train_all(prepared["store"], prepared["validated"], tmp_path / "whole", cfg)

    calls = {"n": 0}
    real_collate = train.collate

    def crash_in_epoch_three(examples):
        calls["n"] += 1
        batches_per_epoch = -(-len(json.loads((tmp_path / "whole" / "session5-seed0" / "fold.json")
                                              .read_text())["train_ids"]) // 32)
        if calls["n"] > 2 * batches_per_epoch + 1:  # training batches only
            raise KeyboardInterrupt("killed")
        return real_collate(examples)

    monkeypatch.setattr(train, "collate", crash_in_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        member.train_all(prepared["store"], prepared["validated"], tmp_path / "crashed", cfg)
    saved = torch.load(tmp_path / "crashed" / "session5-seed0" / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 2 and not (tmp_path / "crashed" / "session5-seed0" / "model.pt").exists()
    monkeypatch.setattr(train, "collate", real_collate)

    member.train_all(prepared["store"], prepared["validated"], tmp_path / "crashed", cfg, resume=True)
    whole = weights(tmp_path / "whole" / "session5-seed0" / "model.pt")
    resumed = weights(tmp_path / "crashed" / "session5-seed0" / "model.pt")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    def curve(run):  # everything but the wall time
        history = json.loads((tmp_path / run / "session5-seed0" / "history.json").read_text())
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert [h["epoch"] for h in curve("crashed")] == [1, 2, 3, 4]
    assert curve("crashed") == curve("whole")


def test_resume_with_the_authors_model_settings_gives_the_same_model(prepared, tmp_path,
                                                                    monkeypatch, capsys):
    """GRUs, multi-head attention, attention pooling, a frame projection and dropout after
    every encoder: a run resumed after a crash still ends with the same weights."""
    cfg = config("train.epochs=2", "model.cell=gru", "model.attention=multihead",
                 "model.attention_heads=4", "model.word_pooling=attention",
                 "model.frame_projection=24", "model.encoder_dropout=true")
    member.train_all(prepared["store"], prepared["validated"], tmp_path / "whole", cfg)
    real_checkpoint = train.MemberTrainer.checkpoint

    def crash_after_epoch_one(self):
        real_checkpoint(self)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(train.MemberTrainer, "checkpoint", crash_after_epoch_one)
    with pytest.raises(KeyboardInterrupt):
        member.train_all(prepared["store"], prepared["validated"], tmp_path / "crashed", cfg)
    monkeypatch.setattr(train.MemberTrainer, "checkpoint", real_checkpoint)
    member.train_all(prepared["store"], prepared["validated"], tmp_path / "crashed", cfg, resume=True)
    assert "session5-seed0: resumed after epoch 1" in capsys.readouterr().out
    whole = weights(tmp_path / "whole" / "session5-seed0" / "model.pt")
    resumed = weights(tmp_path / "crashed" / "session5-seed0" / "model.pt")
    assert "speech.lstm.forward_gru.weight_ih_l0" in whole and "pool.context.weight" in whole
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_the_authors_recipe_trains_evaluates_and_serves(prepared, tmp_path):
    """configs/xu2019.yaml, made small: its spectrum store, two epochs, the evaluation; the
    bundle keeps the tokenizer, so serving scores an utterance as evaluation did."""
    from components import features
    from components.config import PROJECT_ROOT
    from model.serving import Predictor
    from model.text import Tokenizer

    cfg = load_config(PROJECT_ROOT / "configs" / "xu2019.yaml", [
        "train.epochs=2", "model.hidden=8", "model.embed_dim=16", "model.frame_projection=16",
        "model.attention_heads=4", "model.frame_pool=10", "train.threads=1",
        "features.workers=1"])
    features.run(prepared["validated"], tmp_path / "store", cfg.features)
    member.train_all(tmp_path / "store", prepared["validated"], tmp_path / "m", cfg)
    metrics = evaluate.run(tmp_path / "m", tmp_path / "store", prepared["validated"],
                           tmp_path / "e", cfg)
    assert metrics["classes"] == ["angry", "happy", "neutral", "sad"] and metrics["n_test"] > 0
    assert 0 <= metrics["ua"] <= 1 and metrics["attention_alignment"]["words"] > 0
    path = tmp_path / "m" / "session5-seed0" / "model.pt"
    bundle = torch.load(path, weights_only=True)
    assert bundle["tokenizer"] == {"punctuation": True, "max_words": 100}
    assert bundle["feature_spec"]["kind"] == "spectrum" and bundle["spec"]["cell"] == "gru"
    predictor = Predictor([path])
    assert predictor.members[0].inputs.vocab.tokenizer == Tokenizer(True, 100)
    predictions = pd.read_csv(tmp_path / "e" / "predictions.csv").head(3)
    rows = outputs.labelled_rows(prepared["validated"] / "manifest.parquet",
                                 cfg.ingest.classes)
    served = predictor.predict_proba(list(rows.loc[predictions["utt_id"], "wav_path"]),
                                     list(rows.loc[predictions["utt_id"], "transcript"]))
    expected = predictions[[f"p_{c}" for c in cfg.ingest.classes]].to_numpy()
    np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-6)


def test_a_checkpoint_from_other_settings_is_refused(prepared, tmp_path):
    member.train_all(prepared["store"], prepared["validated"], tmp_path / "m", config())
    with pytest.raises(train.TrainError, match="other data or settings"):
        member.train_all(prepared["store"], prepared["validated"], tmp_path / "m",
                  config("train.lr=0.01"), resume=True)


def test_evaluation_outputs(prepared, tmp_path):
    cfg = config()
    summary = member.train_all(prepared["store"], prepared["validated"], tmp_path / "m", cfg)
    metrics = evaluate.run(tmp_path / "m", prepared["store"], prepared["validated"],
                           tmp_path / "e", cfg)
    predictions = pd.read_csv(tmp_path / "e" / "predictions.csv")
    assert len(predictions) == metrics["n_test"] == summary["folds"][0]["n_test"]
    assert set(predictions["session"]) == {5}
    assert metrics["wa"] == pytest.approx((predictions["label"] == predictions["predicted"])
                                          .mean())
    recalls = [(predictions[predictions["label"] == c]["predicted"] == c).mean()
               for c in metrics["classes"] if (predictions["label"] == c).any()]
    assert metrics["ua"] == pytest.approx(np.mean(recalls))
    assert np.array(metrics["confusion"]).sum() == metrics["n_test"]
    for picture in ("confusion.png", "learning_curves.png", "attention.png"):
        assert (tmp_path / "e" / picture).read_bytes()[:4] == b"\x89PNG"
    assert set(metrics["ablation"]) == {"ua_without_speech", "ua_without_text"}
    assert metrics["per_session"]["5"]["n"] == metrics["n_test"]
    # Every test utterance of the sample corpus has a forced alignment to check against.
    alignment = metrics["attention_alignment"]
    assert alignment["utterances"] == alignment["utterances_aligned"] == metrics["n_test"]
    assert alignment["words"] >= metrics["n_test"]
    assert 0 < alignment["uniform_mass"] < 1 and 0 <= alignment["mass_in_own_word"] <= 1
    # Trained without the timings, words attend to their own speech: free attention gives a
    # lift of about 1.2 here, the diagonal prior about 3.5 (benchmarks/RESULTS.md).
    assert alignment["lift"] > 2
    assert "attention on each word's own speech" in (tmp_path / "e" / "report.md").read_text()


def test_word_spans_follow_the_forced_alignment(tmp_path):
    wdseg = tmp_path / "u.wdseg"
    wdseg.write_text(" SFrm  EFrm    SegAScr Word\n    0    19     -1 <s>\n"
                     "   20    49     -1 I'M\n   50    59     -1 <sil>\n"
                     "   60    89     -1 GOING(2)\n   90    99     -1 TO\n"
                     "  100   139     -1 LEAVE\n  140   150     -1 </s>\n")
    # The transcript says "gonna" where the aligner heard "going to": the other words keep
    # their spans, that one has none.
    spans = evaluate._word_spans(["i'm", "gonna", "leave"], str(wdseg))
    assert spans == {0: (0.2, 0.5), 2: (1.0, 1.4)}
    assert evaluate._word_spans(["hi"], str(tmp_path / "missing.wdseg")) is None
    assert evaluate._word_spans(["hi"], None) is None


def test_loso_trains_five_folds_and_reports_mean_and_std(prepared, tmp_path):
    cfg = config("protocol=loso", "train.epochs=1", "model.kind=text",
                 "train.selection=best", "train.validation_speakers=1")
    summary = member.train_all(prepared["store"], prepared["validated"], tmp_path / "m", cfg)
    assert [f["fold"] for f in summary["folds"]] == [f"session{s}" for s in range(1, 6)]
    metrics = evaluate.run(tmp_path / "m", prepared["store"], prepared["validated"],
                           tmp_path / "e", cfg)
    uas = [f["ua"] for f in metrics["folds"]]
    assert metrics["ua"] == pytest.approx(np.mean(uas))
    assert metrics["ua_std"] == pytest.approx(np.std(uas))
    assert set(metrics["per_session"]) == {"1", "2", "3", "4", "5"}
    # Every utterance is tested exactly once, by the model that never saw its session.
    predictions = pd.read_csv(tmp_path / "e" / "predictions.csv")
    assert predictions["utt_id"].is_unique
    for fold in summary["folds"]:
        info = json.loads((tmp_path / "m" / fold["member"] / "fold.json").read_text())
        rows = outputs.read_manifest(prepared["validated"] / "manifest.parquet").set_index(
            "utt_id")
        assert info["val_ids"]
        assert set(rows.loc[info["train_ids"] + info["val_ids"], "session"]) == (
            {1, 2, 3, 4, 5} - {info["test_session"]})
        assert not set(rows.loc[info["train_ids"], "speaker"]) & set(
            rows.loc[info["test_ids"] + info["val_ids"], "speaker"])


def test_training_errors_name_the_problem(prepared, tmp_path, monkeypatch):
    manifest = outputs.read_manifest(prepared["validated"] / "manifest.parquet")
    only_five = manifest[manifest["session"] == 5]
    only_five.to_parquet(tmp_path / "five.parquet")
    with pytest.raises(train.TrainError, match="no training utterances"):
        member.train_all(prepared["store"], tmp_path / "five.parquet", tmp_path / "m", config())
    no_sad = manifest[(manifest["label"] != "sad") | (manifest["session"] == 5)]
    no_sad.to_parquet(tmp_path / "nosad.parquet")
    with pytest.raises(train.TrainError, match="class 'sad' has no training utterances"):
        member.train_all(prepared["store"], tmp_path / "nosad.parquet", tmp_path / "m", config())

    from model.features import Normalizer

    monkeypatch.setattr(Normalizer, "apply",
                        lambda self, frames, speaker=None: np.full(frames.shape, np.nan,
                                                                   np.float32))
    with pytest.raises(train.TrainError, match="the loss became nan in epoch 1"):
        member.train_all(prepared["store"], prepared["validated"], tmp_path / "m", config(
            "model.kind=speech"))


@pytest.mark.slow  # the step's command in processes of its own; the step runs in process in the fast tier
def test_cli_train_and_evaluate(prepared, tmp_path):
    early_stopping = [*TINY, "train.selection=best", "train.validation_speakers=1"]
    result = emoalign("train", "--store", prepared["store"], "--manifest",
                      prepared["validated"], "--out", tmp_path / "m",
                      *sum((["--set", o] for o in early_stopping), []))
    assert result.returncode == 0, result.stderr
    assert "session5-seed0: best validation UA" in result.stdout
    result = emoalign("evaluate", "--model", tmp_path / "m", "--store", prepared["store"],
                      "--manifest", prepared["validated"], "--out", tmp_path / "e")
    assert result.returncode == 0, result.stderr
    assert "align (holdout): WA" in result.stdout and "modality ablation" in result.stdout
    assert_one_line_error(emoalign("evaluate", "--model", tmp_path / "none", "--store",
                                   prepared["store"], "--manifest", prepared["validated"],
                                   "--out", tmp_path / "e2"), "no trained model")
    assert_one_line_error(emoalign("train", "--store", prepared["store"], "--manifest",
                                   prepared["validated"], "--out", tmp_path / "m",
                                   "--set", "model.kind=transformer"),
                          "config key 'model.kind' must be one of")
    assert_one_line_error(emoalign("train", "--store", prepared["store"], "--manifest",
                                   prepared["validated"], "--out", tmp_path / "m",
                                   "--set", "train.device=cuda"), "no CUDA device")


def test_average_selection_keeps_the_mean_of_the_last_epochs_weights(prepared, tmp_path,
                                                                     monkeypatch):
    """train.selection=average: every epoch runs (no early stopping), and the bundle holds
    the element-wise mean of the last average_epochs epochs' weights."""
    cfg = load_config(None, [*TINY, "train.epochs=4", "train.selection=average",
                             "train.average_epochs=2", "train.patience=1", "model.kind=text"])
    snapshots = {}
    real_checkpoint = train.MemberTrainer.checkpoint

    def keep_weights(self):
        real_checkpoint(self)
        snapshots[self.state["epoch"]] = {k: v.clone() for k, v in
                                          self.model.state_dict().items()}

    monkeypatch.setattr(train.MemberTrainer, "checkpoint", keep_weights)
    summary = member.train_all(prepared["store"], prepared["validated"], tmp_path / "m", cfg)
    (fold,) = summary["folds"]
    assert fold["epochs_run"] == 4 and sorted(snapshots) == [1, 2, 3, 4]
    kept = torch.load(tmp_path / "m" / fold["member"] / "model.pt",
                      weights_only=True)["state_dict"]
    for key, value in kept.items():
        torch.testing.assert_close(value, (snapshots[3][key] + snapshots[4][key]) / 2)
    assert any(not torch.equal(kept[k], snapshots[4][k]) for k in kept)


def test_training_on_every_speaker_keeps_no_validation_set(prepared, tmp_path):
    """train.validation_speakers=0 (the default): each fold trains on every utterance of
    its training sessions, keeps the mean of the last epochs' weights, and the CLI, the
    learning-curve plot and the MLflow member runs say there was no validation, not a crash
    or a 0."""
    from components.registry import tracking
    from components.registry.store import connect, ensure_experiment

    overrides = [*TINY, "train.selection=average", "train.validation_speakers=0",
                 "model.kind=text"]
    result = emoalign("train", "--store", prepared["store"], "--manifest",
                      prepared["validated"], "--out", tmp_path / "m",
                      *sum((["--set", o] for o in overrides), []))
    assert result.returncode == 0, result.stderr
    assert "session5-seed0: weights averaged up to epoch 3" in result.stdout
    assert "0 validation" in result.stdout
    info = json.loads((tmp_path / "m" / "session5-seed0" / "fold.json").read_text())
    rows = outputs.labelled_rows(prepared["validated"] / "manifest.parquet",
                                 config().ingest.classes)
    assert info["val_ids"] == [] and info["val_speaker"] == ""
    assert sorted(info["train_ids"]) == sorted(rows.loc[rows["session"] != 5, "utt_id"])
    history = json.loads((tmp_path / "m" / "session5-seed0" / "history.json").read_text())
    assert [h["val_ua"] for h in history] == [None] * 3

    cfg = config(*overrides[len(TINY):])
    evaluate.run(tmp_path / "m", prepared["store"], prepared["validated"], tmp_path / "e", cfg)
    assert (tmp_path / "e" / outputs.Evaluation.CURVES_PNG).stat().st_size > 0
    client = connect()
    experiment = ensure_experiment(client, "no-validation")
    parent = client.create_run(experiment).info.run_id
    steps = outputs.StepOutputs(manifest_dir=tmp_path / "unused",
                                validated_dir=prepared["validated"],
                                model_dir=tmp_path / "m", evaluation_dir=tmp_path / "e")
    children = tracking._log_members(client, experiment, parent, steps, {})
    child = children["session5-seed0"]
    assert len(client.get_metric_history(child, "train/loss")) == 3
    assert client.get_metric_history(child, "train/val_ua") == []

    assert_one_line_error(emoalign("train", "--store", prepared["store"], "--manifest",
                                   prepared["validated"], "--out", tmp_path / "m2",
                                   "--set", "train.selection=best"),
                          "train.validation_speakers is 0", "train.selection=average")
