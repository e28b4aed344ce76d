"""Train: feature store + validated manifest -> one model per cross-validation fold.

Each fold holds out one session for testing; one speaker of the training sessions is held
out for validation (early stopping on its UA), so no test speaker ever shapes training.
Every epoch ends with a checkpoint (weights, optimizer, early-stopping state, RNG state);
each epoch's shuffling and dropout are seeded from (seed, fold, epoch), so a run resumed
after a crash finishes with the same weights, bit for bit on CPU, as one never stopped.
"""

import copy
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from components import ingest
from components.config import Config
from components.errors import UserError
from components.features import FeatureStore
from model.data import Example, batch_indices, collate
from model.metrics import scores
from model.features import Normalizer
from model.network import (ModelSpec, build_model, log_probs, loss_fn,
                           off_diagonal_attention)
from model.serving import load_fold, predict_log_probs
from model.vocab import Vocabulary, load_word_vectors

MODEL_FILENAME = "model.pt"
CHECKPOINT_FILENAME = "checkpoint.pt"
HISTORY_FILENAME = "history.json"
FOLD_FILENAME = "fold.json"
SUMMARY_FILENAME = "train_summary.json"


class TrainError(UserError):
    """Training cannot go on (an empty fold, a class missing, a NaN loss); the message says
    which."""


@dataclass
class Fold:
    name: str
    test_session: int
    val_speaker: str  # comma-separated when there are several
    train_ids: list[str]
    val_ids: list[str]
    test_ids: list[str]


def make_folds(labelled: pd.DataFrame, config: Config) -> list[Fold]:
    sessions = sorted(int(s) for s in labelled["session"].unique())
    if config.protocol == "holdout":
        if config.holdout_session not in sessions:
            raise TrainError(f"holdout session {config.holdout_session} has no labelled "
                             f"utterances (sessions present: {sessions})")
        tests = [config.holdout_session]
    else:
        tests = sessions
    folds = []
    for test in tests:
        train_sessions = [s for s in sessions if s != test]
        if not train_sessions:
            raise TrainError(f"fold session{test}: no training utterances (only session "
                             f"{test} has labelled data)")
        # Validation: speakers of the training sessions (one per session, the sessions after
        # the test one), so early stopping never sees a test speaker.
        n_val = min(config.train.validation_speakers, len(train_sessions) - 1) or 1
        val_speakers = [f"Ses0{train_sessions[(test + k) % len(train_sessions)]}"
                        f"{'FM'[(config.seed + k) % 2]}" for k in range(n_val)]
        in_train = labelled["session"] != test
        is_val = labelled["speaker"].isin(val_speakers)
        folds.append(Fold(
            name=f"session{test}", test_session=test, val_speaker=",".join(val_speakers),
            train_ids=labelled.loc[in_train & ~is_val, "utt_id"].tolist(),
            val_ids=labelled.loc[in_train & is_val, "utt_id"].tolist(),
            test_ids=labelled.loc[~in_train, "utt_id"].tolist()))
    return folds


def _check_fold(fold: Fold, labels: dict[str, str], classes: list[str]) -> None:
    if not fold.train_ids:
        raise TrainError(f"fold {fold.name}: the training set is empty")
    if not fold.val_ids:
        raise TrainError(f"fold {fold.name}: validation speaker(s) {fold.val_speaker} have "
                         "no labelled utterances")
    present = {labels[u] for u in fold.train_ids}
    for name in classes:
        if name not in present:
            raise TrainError(f"fold {fold.name}: class '{name}' has no training utterances")


def choose_device(setting: str) -> torch.device:
    if setting == "cuda" and not torch.cuda.is_available():
        raise TrainError("train.device is cuda but no CUDA device is available")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


@dataclass
class Prepared:
    """What a fold's model needs to see its inputs as in training: vocabulary and
    normaliser (both fitted on the fold's training data only)."""

    vocab: Vocabulary
    normalizer: Normalizer
    classes: list[str]

    def examples(self, ids, store: FeatureStore, rows: pd.DataFrame) -> list[Example]:
        label_of = {c: i for i, c in enumerate(self.classes)}
        out = []
        for utt in ids:
            row = rows.loc[utt]
            out.append(Example(utt, self.normalizer.apply(np.asarray(store.get(utt)),
                                                          row["speaker"]),
                               self.vocab.encode(row["transcript"]),
                               label_of.get(row["label"], -1)))
        return out


def predict(model, examples: list[Example], device, batch_size: int = 64) -> np.ndarray:
    """Class log-probabilities (N, C), in the order of `examples` (as serving computes them)."""
    return predict_log_probs(model, examples, device, batch_size)


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, fingerprint: str):
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: never half-load it
        print(f"checkpoint {path} cannot be read ({type(e).__name__}); starting the fold over")
        return None
    if state.get("fingerprint") != fingerprint:
        raise TrainError(f"checkpoint {path} was made with other data or settings; "
                         "remove it or run without --resume")
    return state


def train_fold(fold: Fold, fold_index: int, store: FeatureStore, rows: pd.DataFrame,
               config: Config, out_dir: Path, resume: bool, device: torch.device,
               fingerprint: str) -> dict:
    from tqdm import tqdm

    classes = list(config.ingest.classes)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = Vocabulary.build(rows.loc[fold.train_ids, "transcript"],
                             config.model.min_word_count)
    prepared = Prepared(vocab, store.normalizer(fold.test_session,
                                                config.features.normalization), classes)
    train = prepared.examples(fold.train_ids, store, rows)
    val = prepared.examples(fold.val_ids, store, rows)
    spec = ModelSpec(kind=config.model.kind, n_classes=len(classes),
                     feature_dim=store.spec.dim, vocab_size=len(vocab),
                     embed_dim=config.model.embed_dim, hidden=config.model.hidden,
                     attention=config.model.attention,
                     attention_dim=config.model.attention_dim,
                     frame_pool=config.model.frame_pool, dropout=config.model.dropout,
                     unimodal_heads=config.model.kind == "align"
                     and config.train.unimodal_loss > 0)
    torch.manual_seed(config.seed * 1009 + fold_index)
    model = build_model(spec).to(device)
    if config.model.word_vectors and config.model.kind != "speech":
        _use_word_vectors(model, Path(config.model.word_vectors), vocab, spec)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    weight = None
    if config.train.class_weights:
        counts = np.bincount([e.label for e in train], minlength=len(classes)).astype(float)
        weight = torch.tensor(counts.sum() / (len(classes) * counts), dtype=torch.float32,
                              device=device)

    state = {"epoch": 0, "best_ua": -1.0, "best_epoch": 0, "best_state": None,
             "patience": 0, "history": []}
    checkpoint_path = out_dir / CHECKPOINT_FILENAME
    if resume and checkpoint_path.is_file():
        saved = _load_checkpoint(checkpoint_path, fingerprint)
        if saved is not None:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            state = {k: saved[k] for k in state}
            torch.set_rng_state(saved["rng_torch"])
            print(f"fold {fold.name}: resumed after epoch {state['epoch']}")
    autocast = device.type == "cuda" and config.train.bf16
    lengths = [len(e.frames) for e in train]

    for epoch in range(state["epoch"] + 1, config.train.epochs + 1):
        if state["patience"] >= config.train.patience and epoch > config.train.min_epochs:
            break
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, epoch)
        torch.manual_seed(config.seed * 1_000_003 + fold_index * 1009 + epoch)
        rng = np.random.default_rng([config.seed, fold_index, epoch])
        batches = batch_indices(lengths, config.train.batch_size, rng, config.train.bucketing)
        model.train()
        total, seen = 0.0, 0
        hits, support = np.zeros(len(classes)), np.zeros(len(classes))
        bar = tqdm(batches, desc=f"{fold.name} epoch {epoch}", unit="batch", disable=None,
                   leave=False)
        for idx in bar:
            batch = collate([train[i] for i in idx])
            if config.model.kind == "align" and config.train.modality_dropout:
                batch = drop_modalities(batch, config.train.modality_dropout)
            batch = batch.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                if spec.kind == "align":
                    loss, output = align_loss(model, batch, weight, config,
                                              guide_scale(config, epoch))
                else:
                    output = model(batch.frames, batch.frame_lengths, batch.words,
                                   batch.word_lengths)
                    loss = loss_fn(output.float(), batch.labels, weight)
            if not torch.isfinite(loss):
                raise TrainError(f"fold {fold.name}: the loss became {loss.item()} in epoch "
                                 f"{epoch}; lower train.lr or check the features")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.train.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
            optimizer.step()
            total += loss.item() * len(idx)
            seen += len(idx)
            labels = batch.labels.cpu().numpy()
            correct = log_probs(output.detach()).argmax(-1).cpu().numpy() == labels
            support += np.bincount(labels, minlength=len(classes))
            hits += np.bincount(labels[correct], minlength=len(classes))
            # UA on the training batches so far (dropout and all); validation UA follows.
            bar.set_postfix(loss=f"{total / seen:.3f}",
                            ua=f"{np.mean(hits[support > 0] / support[support > 0]):.3f}")
        bar.close()
        val_scores = scores([e.label for e in val], predict(model, val, device).argmax(1),
                            classes)
        # Before min_epochs the weights move too fast for a small validation set to judge:
        # an early lucky score would otherwise win over the converged model.
        better = epoch >= min(config.train.min_epochs, config.train.epochs) and (
            val_scores["ua"] > state["best_ua"])
        if better:
            state.update(best_ua=val_scores["ua"], best_epoch=epoch, patience=0,
                         best_state=copy.deepcopy(model.state_dict()))
        else:
            state["patience"] += 1
        state["epoch"] = epoch
        state["history"].append({"epoch": epoch, "loss": total / seen,
                                 "val_ua": val_scores["ua"], "val_wa": val_scores["wa"],
                                 "seconds": round(time.perf_counter() - started, 3)})
        print(f"{fold.name} epoch {epoch:2d}: loss {total / seen:.4f}  val UA "
              f"{val_scores['ua']:.3f}  WA {val_scores['wa']:.3f}"
              f"{'  (best)' if better else ''}", flush=True)
        _save_atomic({"fingerprint": fingerprint, "model": model.state_dict(),
                      "optimizer": optimizer.state_dict(), "rng_torch": torch.get_rng_state(),
                      **state}, checkpoint_path)

    bundle = {"state_dict": state["best_state"], "spec": spec.to_dict(),
              "vocab": vocab.to_list(), "normalizer": prepared.normalizer.to_dict(),
              "normalization": config.features.normalization, "classes": classes,
              "feature_spec": store.spec.to_dict(), "feature_dtype": store.meta["dtype"],
              "fold": fold.name,
              "best_epoch": state["best_epoch"], "best_val_ua": state["best_ua"]}
    _save_atomic(bundle, out_dir / MODEL_FILENAME)
    (out_dir / HISTORY_FILENAME).write_text(json.dumps(state["history"], indent=1))
    (out_dir / FOLD_FILENAME).write_text(json.dumps(vars(fold), indent=1))
    return {"fold": fold.name, "best_epoch": state["best_epoch"],
            "best_val_ua": state["best_ua"], "epochs_run": state["epoch"],
            "n_train": len(fold.train_ids), "n_val": len(fold.val_ids),
            "n_test": len(fold.test_ids), "vocab_size": len(vocab)}


def guide_scale(config: Config, epoch: int) -> float:
    """The guided-attention weight's share in an epoch: full at the first, falling linearly
    to nothing after `guided_attention_fade` of the epochs. Held to the end, the guide keeps
    each word on its place in the utterance and costs accuracy; faded, alignment learnt
    early stays while the fusion learns what it needs (benchmarks/RESULTS.md)."""
    fade_epochs = config.train.guided_attention_fade * config.train.epochs
    if fade_epochs <= 0:
        return 1.0
    return float(max(0.0, 1 - (epoch - 1) / fade_epochs))


def align_loss(model, batch, weight, config: Config,
               guide: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The fusion loss, plus the unimodal heads' losses and the guided-attention term (its
    weight times `guide`) where the config turns them on (model/network.py says why each
    helps); and the logits."""
    out = model.outputs(batch.frames, batch.frame_lengths, batch.words, batch.word_lengths)
    loss = loss_fn(out.logits.float(), batch.labels, weight)
    if out.unimodal is not None:
        loss = loss + config.train.unimodal_loss * loss_fn(
            torch.stack(out.unimodal).float(), batch.labels, weight)
    if config.train.guided_attention and guide > 0:
        loss = loss + guide * config.train.guided_attention * off_diagonal_attention(
            out.attention, batch.word_lengths, out.speech_lengths,
            config.train.guided_attention_width)
    return loss, out.logits


def learning_rate(config: Config, epoch: int) -> float:
    """Cosine decay from train.lr to a tenth of it over the epochs: the late epochs, where
    early stopping picks a model, move less. A function of the epoch, so a resumed run
    needs no scheduler state."""
    if config.train.lr_schedule == "constant" or config.train.epochs == 1:
        return config.train.lr
    progress = (epoch - 1) / (config.train.epochs - 1)
    # A Python float: numpy scalars in the optimizer state would not load weights-only.
    return float(config.train.lr * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * progress))))


def drop_modalities(batch, p: float):
    """Take the speech (frames at the training mean) from a share p/2 of the utterances and
    the words (all unknown) from another p/2. A fusion model otherwise leans on whichever
    modality it learns first and quietly ignores the other."""
    draw = torch.rand(len(batch.utt_ids))
    no_speech = draw < p / 2
    no_text = (draw >= p / 2) & (draw < p)
    batch.frames[no_speech] = 0.0
    batch.words[no_text] = torch.where(batch.words[no_text] > 0, 1, 0)
    return batch


def _use_word_vectors(model, path: Path, vocab: Vocabulary, spec: ModelSpec) -> None:
    if not path.is_file():
        raise TrainError(f"word vector file not found: {path}")
    try:
        matrix, found = load_word_vectors(path, vocab, spec.embed_dim)
    except ValueError as e:
        raise TrainError(f"word vectors: {e}") from None
    encoders = [m for m in model.modules() if hasattr(m, "embed")]
    for encoder in encoders:
        encoder.embed.weight.data.copy_(torch.from_numpy(matrix))
    print(f"word vectors: {found} of {len(vocab) - 2} words found in {path}")


def load_bundle(path: Path, device="cpu"):
    """A trained fold model and what it needs to see inputs as in training."""
    fold = load_fold(path, device)
    return (fold.model, Prepared(fold.vocab, fold.normalizer, fold.bundle["classes"]),
            fold.bundle)


def labelled_rows(manifest_path: Path, classes: list[str]) -> pd.DataFrame:
    from components.validate import resolve_manifest_path

    manifest = ingest.read_manifest(resolve_manifest_path(manifest_path))
    labelled = manifest[manifest["label"].isin(classes)]
    if labelled.empty:
        raise TrainError("the manifest holds no utterance of the configured classes")
    return labelled.set_index("utt_id", drop=False)


def run(store_dir: Path, manifest_path: Path, out_dir: Path, config: Config,
        resume: bool = False) -> dict:
    """Train one model per fold of the configured protocol; returns the summary."""
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    device = choose_device(config.train.device)
    store = FeatureStore(Path(store_dir))
    rows = labelled_rows(manifest_path, config.ingest.classes)
    missing = [u for u in rows.index if u not in store]
    if missing:
        raise TrainError(f"{len(missing)} utterances are not in the feature store "
                         f"{store_dir} (first: {missing[0]}); run features again")
    folds = make_folds(rows, config)
    labels = rows["label"].to_dict()
    for fold in folds:
        _check_fold(fold, labels, config.ingest.classes)
    # A checkpoint belongs to these data and settings only.
    fingerprint = hashlib.sha256(json.dumps(
        {"config": config.to_dict(), "store": store.meta["key"], "rows": sorted(rows.index)},
        sort_keys=True).encode()).hexdigest()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = [train_fold(fold, i, store, rows, config, out_dir / fold.name, resume, device,
                          fingerprint) for i, fold in enumerate(folds)]
    summary = {"protocol": config.protocol, "model_kind": config.model.kind,
               "device": str(device), "folds": results,
               "seconds": round(time.perf_counter() - started, 2)}
    (out_dir / SUMMARY_FILENAME).write_text(json.dumps(summary, indent=1))
    return summary
