"""Training and evaluation: reproducible, resumable after a crash, measured as the field
measures, with clear errors, and fusion that really uses both modalities."""

import json
import os
import platform
import resource
import subprocess
import sys

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


# A fresh process trains through the real code path (member.train_all, `emoalign train`'s
# call) when given a store, then probes its malloc with blocks of 4, 31 and 64 MiB. For each
# size it first takes blocks, pages untouched, until one is mapped on its own (glibc's
# mallinfo2 counts those), holding them: the free chunks of the heap then have none of that
# size left to give, and what comes next is up to glibc's thresholds alone. Then rounds of
# malloc, every page written, free; it prints the most minor page faults a round cost after
# the first two (glibc's mmap threshold adapts on the first free).
TRAIN_THEN_PROBE = """
import ctypes, json, resource, sys
from pathlib import Path
if sys.argv[1:]:
    from components import member
    from components.config import load_config
    store, validated, out = map(Path, sys.argv[1:4])
    member.train_all(store, validated, out, load_config(None, sys.argv[4:]))
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
info, field = (libc.mallinfo2, ctypes.c_size_t) if hasattr(libc, "mallinfo2") else (
    libc.mallinfo, ctypes.c_int)
class Mallinfo(ctypes.Structure):
    _fields_ = [(name, field) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
info.restype = Mallinfo
def faults(size, rounds=6, hold_at_most=1 << 30):
    held = []
    while len(held) * size < hold_at_most:
        mapped = info().hblks
        block = libc.malloc(size)
        if info().hblks > mapped:
            libc.free(block)
            break
        held.append(block)
    counts = []
    for _ in range(rounds):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)
        libc.free(block)
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    for block in held:
        libc.free(block)
    return max(counts[2:])
print(json.dumps({mib: faults(mib << 20) for mib in (4, 31, 64)}))
"""
GLIBC = platform.libc_ver()[0] == "glibc"
PAGES_PER_MIB = (1 << 20) // resource.getpagesize()


def without_malloc_settings(environ) -> dict[str, str]:
    return {k: v for k, v in environ.items()
            if k != "GLIBC_TUNABLES" and not k.startswith("MALLOC_")}


@pytest.fixture(scope="module")
def trained_in_fresh_processes(prepared, tmp_path_factory) -> dict:
    """The TINY model trained in two fresh processes: "tuned", started with glibc's malloc
    set up for training (environment.training_allocator, as kfp.local's tasks, the image and
    `emoalign train` start theirs), and "untouched", started with none of glibc's malloc
    settings. Each one's folder, and its page faults per round after training, by block
    size in MiB (TRAIN_THEN_PROBE)."""
    work = tmp_path_factory.mktemp("fresh-processes")
    untouched = without_malloc_settings(os.environ)
    tuned = {**untouched, **environment.training_allocator(untouched)}
    started = {name: subprocess.Popen(  # both at once: one thread each (TINY)
        [sys.executable, "-c", TRAIN_THEN_PROBE, str(prepared["store"]),
         str(prepared["validated"]), str(work / name), *TINY],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, env in (("tuned", tuned), ("untouched", untouched))}
    out = {}
    for name, process in started.items():
        stdout, stderr = process.communicate()
        assert process.returncode == 0, stderr[-3000:]
        faults = {int(mib): n for mib, n in json.loads(stdout.splitlines()[-1]).items()}
        out[name] = {"dir": work / name, "faults": faults}
    return out


def test_same_inputs_same_model_and_metrics(trained_in_fresh_processes, prepared, tmp_path):
    """The same model, trained with glibc's malloc set up for training and as glibc leaves
    it: where memory comes from must not change the arithmetic. Another seed, another model."""
    runs = trained_in_fresh_processes
    if GLIBC:  # the settings reached the process: a block past glibc's largest mmap
        # threshold (32 MiB) is reused from the heap, where by default it is mapped anew
        tuned, untouched = (runs[n]["faults"][64] for n in ("tuned", "untouched"))
        assert tuned < 100 < untouched, runs
    cfg = config()
    for name in ("tuned", "untouched"):
        evaluate.run(runs[name]["dir"], prepared["store"], prepared["validated"],
                     tmp_path / f"eval_{name}", cfg)
    wa, wb = (weights(runs[n]["dir"] / "session5-seed0" / "model.pt")
              for n in ("tuned", "untouched"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ma, mb = (json.loads((tmp_path / f"eval_{n}" / "metrics.json").read_text())
              for n in ("tuned", "untouched"))
    assert ma == mb
    other = config("seed=1")
    member.train_all(prepared["store"], prepared["validated"], tmp_path / "c", other)
    wc = weights(tmp_path / "c" / "session5-seed1" / "model.pt")
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc alone")
def test_training_leaves_the_allocator_as_glibc_set_it(trained_in_fresh_processes):
    """Training changes nothing in its process's malloc: after it, glibc's mmap threshold
    still adapts (up to 32 MiB), so blocks of 4 and 31 MiB freed and taken again come back
    without page faults. Setting any of glibc's malloc parameters from inside the process,
    even to their defaults, stops the adapting for good: each block past the threshold as it
    then stood is mapped anew every round, every page faulted in (1,025 and 7,937 a round
    here after training at ff60b0b, which set them around training and back after). The
    probe is checked too: in a process started with the threshold fixed, it counts those."""
    faults = trained_in_fresh_processes["untouched"]["faults"]
    for mib in (4, 31):
        assert faults[mib] < mib * PAGES_PER_MIB / 10, (mib, faults)
    fixed = {**without_malloc_settings(os.environ),
             "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=131072"}
    done = subprocess.run([sys.executable, "-c", TRAIN_THEN_PROBE], env=fixed,
                          capture_output=True, text=True, check=True)
    faults = {int(mib): n for mib, n in json.loads(done.stdout).items()}
    for mib in (4, 31):
        assert faults[mib] >= mib * PAGES_PER_MIB, (mib, faults)


def test_training_allocator_settings_leave_an_operators_own_alone(monkeypatch):
    """What a training process is started with: glibc's malloc settings for training, after
    an operator's other tunables; nothing more where the operator (or an earlier start)
    decided when memory goes back to the kernel, by either of glibc's names; nothing at all
    where the C library is not glibc."""
    monkeypatch.setattr(platform, "libc_ver", lambda: ("glibc", "2.36"))
    ours = ("glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647:"
            "glibc.malloc.top_pad=67108864")
    allocator = environment.training_allocator
    assert allocator({}) == {"GLIBC_TUNABLES": ours}
    assert allocator({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F:glibc.malloc.arena_max=2",
                      "MALLOC_ARENA_MAX": "4", "MALLOC_PERTURB_": "1"}) == {
        "GLIBC_TUNABLES": f"glibc.cpu.hwcaps=-AVX512F:glibc.malloc.arena_max=2:{ours}"}
    for theirs in ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1048576"},
                   {"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2:glibc.malloc.mmap_threshold=1"},
                   {"MALLOC_TOP_PAD_": "0"}, {"MALLOC_MMAP_MAX_": "65536"},
                   {"GLIBC_TUNABLES": ours}):
        assert allocator(theirs) == {}, theirs
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    assert allocator({}) == {}


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
    # Trained without the timings, words attend to their own speech, and training keeps
    # what the diagonal prior starts them with: free attention gives a lift of about 1.2
    # here, so attention that training pulled off the words' speech falls far below the
    # prior's own lift (benchmarks/RESULTS.md).
    assert alignment["prior_lift"] > 2
    assert alignment["lift"] > 0.9 * alignment["prior_lift"]
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
