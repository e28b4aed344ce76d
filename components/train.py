"""Train: feature store + validated manifest -> one (fold, seed) model (components/member.py
runs a member: its task config, this training, its summary and its evaluation).

Each fold holds out one session for testing and by default trains on every speaker of the
others, keeping the mean of the last epochs' weights; with `train.validation_speakers`,
speakers of the training sessions are held out for validation (early stopping on their UA
under `train.selection=best`), so no test speaker ever shapes training either way.
Every epoch ends with a checkpoint (weights, optimizer, selection state, RNG state);
each epoch's shuffling and dropout are seeded from (seed, fold, epoch), so a run resumed
after a crash finishes with the same weights, bit for bit on CPU, as one never stopped.
"""

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from components import environment, outputs
from components.config import Config
from components.folds import Task, TrainError
from components.feature_store import FeatureStore
from components.outputs import TrainedModel
from components.selection import selection_for
from components.transcripts import Transcriber, recognised_rows
from model.data import batch_indices, collate
from model.metrics import scores
from model.network import LossTerms, build_model, model_class
from model.serving import Inputs, predict_log_probs
from model.spec import PAD_ID, UNK_ID, ModelSpec
from model.text import Tokenizer
from model.vocab import Vocabulary, load_word_vectors


def choose_device(setting: str) -> torch.device:
    if setting == "cuda" and not torch.cuda.is_available():
        raise TrainError("train.device is cuda but no CUDA device is available")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


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
    if "selection" not in state:
        print(f"checkpoint {path} was written by an older emoalign; starting the fold over")
        return None
    return state


class MemberTrainer:
    """One (fold, seed) model's training, in the shape of SpeechBrain's Brain: set up, run
    an epoch, let the selection see it and checkpoint, write the bundle."""

    def __init__(self, task: Task, store: FeatureStore, rows: pd.DataFrame, config: Config,
                 out_dir: Path, device: torch.device, fingerprint: str):
        fold = self.fold = task.split
        self.task, self.config = task, config
        self.out_dir, self.device, self.fingerprint = out_dir, device, fingerprint
        self.classes = list(config.ingest.classes)
        out_dir.mkdir(parents=True, exist_ok=True)
        vocab = Vocabulary.build(rows.loc[fold.train_ids, "transcript"],
                                 config.model.min_word_count, tokenizer_of(config))
        self.inputs = Inputs(vocab, store.normalizer(fold.test_session,
                                                     config.features.normalization),
                             self.classes)
        self.train_set = store.examples(self.inputs, fold.train_ids, rows)
        self.val_set = store.examples(self.inputs, fold.val_ids, rows)
        self.feature_store = store
        self.spec = ModelSpec.of(config.model, n_classes=len(self.classes),
                                 feature_dim=store.spec.dim, vocab_size=len(vocab),
                                 unimodal_heads=model_class(config.model.kind)
                                 .has_unimodal_heads and config.train.unimodal_loss > 0)
        torch.manual_seed(config.seed * 1009 + task.fold_index)
        self.model = build_model(self.spec).to(device)
        if config.model.word_vectors and "text" in self.model.modalities:
            _use_word_vectors(self.model, Path(config.model.word_vectors), vocab, self.spec,
                              config.model.unknown_word_init)
        # One kernel for the whole step instead of a dozen small ops per parameter (about
        # a tenth of a CPU epoch at the default size: benchmarks/train.py).
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.train.lr,
                                          fused=device.type in ("cpu", "cuda"))
        self.scheduler = lr_scheduler(self.optimizer, config)
        self.weight = self._class_weights() if config.train.class_weights else None
        self.selection = selection_for(config.train)
        self.state = {"epoch": 0, "history": []}

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / TrainedModel.CHECKPOINT

    def _class_weights(self) -> torch.Tensor:
        counts = np.bincount([e.label for e in self.train_set],
                             minlength=len(self.classes)).astype(float)
        return torch.tensor(counts.sum() / (len(self.classes) * counts), dtype=torch.float32,
                            device=self.device)

    def resume(self) -> None:
        """Continue after the last epoch the checkpoint holds, if there is one."""
        if not self.checkpoint_path.is_file():
            return
        saved = _load_checkpoint(self.checkpoint_path, self.fingerprint)
        if saved is None:
            return
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.state = {k: saved[k] for k in self.state}
        self.selection.state = saved["selection"]
        torch.set_rng_state(saved["rng_torch"])
        print(f"{self.fold.member}: resumed after epoch {self.state['epoch']}")

    def fit(self) -> dict:
        for epoch in range(self.state["epoch"] + 1, self.config.train.epochs + 1):
            if self.selection.should_stop(epoch):
                break
            started = time.perf_counter()
            loss = self.run_epoch(epoch)
            self.end_epoch(epoch, loss, time.perf_counter() - started)
            self.scheduler.step()
            self.checkpoint()
        # What is kept is scored, not the last epoch's weights.
        self.model.load_state_dict(self.selection.weights)
        return self.write_bundle(self.validation_scores()["ua"])

    def run_epoch(self, epoch: int) -> float:
        """One pass over the training set; returns the mean loss."""
        from tqdm import tqdm

        config = self.config
        torch.manual_seed(config.seed * 1_000_003 + self.task.fold_index * 1009 + epoch)
        rng = np.random.default_rng([config.seed, self.task.fold_index, epoch])
        batches = batch_indices([len(e.frames) for e in self.train_set],
                                config.train.batch_size, rng, config.train.bucketing)
        self.model.train()
        running = RunningScores(len(self.classes), self.model.log_probs)
        bar = tqdm(batches, desc=f"{self.fold.member} epoch {epoch}", unit="batch",
                   disable=None, leave=False)
        for idx in bar:
            loss, labels, output = self.train_step(idx, epoch)
            running.add(loss, labels, output)
            # UA on the training batches so far (dropout and all); validation UA follows.
            bar.set_postfix(loss=f"{running.loss:.3f}", ua=f"{running.ua:.3f}")
        bar.close()
        return running.loss

    def train_step(self, idx, epoch: int):
        """Forward, backward and an optimizer step on one batch: (loss, labels, output)."""
        train, model = self.config.train, self.model
        batch = collate([self.train_set[i] for i in idx])
        if model.joint_fusion and train.modality_dropout:
            batch = drop_modalities(batch, train.modality_dropout)
        batch = batch.to(self.device)
        autocast = self.device.type == "cuda" and train.bf16
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
            loss, output = model.training_loss(batch, self.weight, loss_terms(self.config))
        if not torch.isfinite(loss):
            raise TrainError(f"fold {self.fold.name} seed {self.fold.seed}: the loss became "
                             f"{loss.item()} in epoch {epoch}; lower train.lr or check the "
                             "features")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if train.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        self.optimizer.step()
        return loss.item(), batch.labels.cpu().numpy(), output.detach()

    def end_epoch(self, epoch: int, loss: float, seconds: float) -> None:
        """Score the validation speakers, show the selection this epoch, log it."""
        val = self.validation_scores()
        kept = self.selection.observe(epoch, self.model, val["ua"])
        self.state["epoch"] = epoch
        self.state["history"].append({"epoch": epoch, "loss": loss, "val_ua": val["ua"],
                                      "val_wa": val["wa"], "seconds": round(seconds, 3)})
        watched = (f"val UA {val['ua']:.3f}  WA {val['wa']:.3f}" if val["ua"] is not None
                   else "no validation speaker")
        print(f"{self.fold.member} epoch {epoch:2d}: loss {loss:.4f}  {watched}"
              f"{'  (best)' if kept else ''}", flush=True)

    def validation_scores(self) -> dict:
        """UA and WA on the validation speakers; None for both when there are none."""
        if not self.val_set:
            return {"ua": None, "wa": None}
        return scores([e.label for e in self.val_set],
                      predict_log_probs(self.model, self.val_set, self.device).argmax(1),
                      self.classes)

    def checkpoint(self) -> None:
        _save_atomic({"fingerprint": self.fingerprint, "model": self.model.state_dict(),
                      "optimizer": self.optimizer.state_dict(),
                      "scheduler": self.scheduler.state_dict(),
                      "rng_torch": torch.get_rng_state(), "selection": self.selection.state,
                      **self.state}, self.checkpoint_path)

    def write_bundle(self, kept_val_ua: float | None) -> dict:
        """The kept weights with all serving needs to see inputs as training did. The
        bundle's `best_*` keys name the kept epoch (the last one averaged, under
        `average`) and its validation UA, as bundles always have."""
        fold, store, kept_epoch = self.fold, self.feature_store, self.selection.epoch
        bundle = {"state_dict": self.selection.weights, "spec": self.spec.to_dict(),
                  "vocab": self.inputs.vocab.to_list(),
                  "normalizer": self.inputs.normalizer.to_dict(),
                  "normalization": self.config.features.normalization,
                  "classes": self.classes, "feature_spec": store.spec.to_dict(),
                  "feature_dtype": store.meta["dtype"], "fold": fold.name, "seed": fold.seed,
                  "best_epoch": kept_epoch, "best_val_ua": kept_val_ua}
        if tokenizer := self.inputs.vocab.tokenizer.to_dict():  # none: today's, as before
            bundle["tokenizer"] = tokenizer
        _save_atomic(bundle, self.out_dir / TrainedModel.MODEL)
        (self.out_dir / TrainedModel.HISTORY).write_text(json.dumps(self.state["history"],
                                                                    indent=1))
        (self.out_dir / TrainedModel.FOLD).write_text(json.dumps(vars(fold), indent=1))
        return {"fold": fold.name, "seed": fold.seed, "member": fold.member,
                "best_epoch": kept_epoch, "best_val_ua": kept_val_ua,
                "epochs_run": self.state["epoch"], "n_train": len(fold.train_ids),
                "n_val": len(fold.val_ids), "n_test": len(fold.test_ids),
                "vocab_size": len(self.inputs.vocab)}


class RunningScores:
    """Mean loss and UA over the training batches of an epoch so far."""

    def __init__(self, n_classes: int, log_probs):
        self.log_probs = log_probs
        self.total, self.seen = 0.0, 0
        self.hits, self.support = np.zeros(n_classes), np.zeros(n_classes)

    def add(self, loss: float, labels: np.ndarray, logits: torch.Tensor) -> None:
        self.total += loss * len(labels)
        self.seen += len(labels)
        correct = self.log_probs(logits).argmax(-1).cpu().numpy() == labels
        self.support += np.bincount(labels, minlength=len(self.support))
        self.hits += np.bincount(labels[correct], minlength=len(self.support))

    @property
    def loss(self) -> float:
        return self.total / self.seen

    @property
    def ua(self) -> float:
        present = self.support > 0
        return float(np.mean(self.hits[present] / self.support[present]))


def loss_terms(config: Config) -> LossTerms:
    """The weights of the loss terms beside classification (for the models that have
    them)."""
    return LossTerms(unimodal=config.train.unimodal_loss)


def lr_scheduler(optimizer, config: Config):
    """Cosine decay from train.lr to a tenth of it at the last epoch, stepped once an epoch:
    the late epochs, whose weights are averaged (or where early stopping picks a model),
    move less."""
    train = config.train
    if train.lr_schedule == "constant" or train.epochs == 1:
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=train.epochs - 1,
                                                      eta_min=train.lr / 10)


def drop_modalities(batch, p: float):
    """Take the speech (frames at the training mean) from a share p/2 of the utterances and
    the words (all unknown) from another p/2. A fusion model otherwise leans on whichever
    modality it learns first and quietly ignores the other."""
    draw = torch.rand(len(batch.utt_ids))
    no_speech = draw < p / 2
    no_text = (draw >= p / 2) & (draw < p)
    batch.frames[no_speech] = 0.0
    batch.words[no_text] = torch.where(batch.words[no_text] != PAD_ID, UNK_ID, PAD_ID)
    return batch


def tokenizer_of(config: Config) -> Tokenizer:
    """How the model's transcripts become tokens (saved with the model)."""
    return Tokenizer(config.model.punctuation_tokens, config.model.max_words)


def _use_word_vectors(model, path: Path, vocab: Vocabulary, spec: ModelSpec,
                      unknown: str = "normal") -> None:
    if not path.is_file():
        raise TrainError(f"word vector file not found: {path}")
    try:
        matrix, found = load_word_vectors(path, vocab, spec.embed_dim, unknown)
    except ValueError as e:
        raise TrainError(f"word vectors: {e}") from None
    encoders = [m for m in model.modules() if hasattr(m, "embed")]
    for encoder in encoders:
        encoder.embed.weight.data.copy_(torch.from_numpy(matrix))
    print(f"word vectors: {found} of {len(vocab) - 2} words found in {path}")


def load_inputs(store_dir: Path, manifest_path: Path, config: Config
                ) -> tuple[FeatureStore, pd.DataFrame]:
    """The feature store and the labelled rows of the validated manifest, every row's
    frames in the store."""
    store = FeatureStore(Path(store_dir))  # a wrong store is named before the manifest
    rows = outputs.labelled_rows(manifest_path, config.ingest.classes, config.ingest.subset)
    missing = [u for u in rows.index if u not in store]
    if missing:
        raise TrainError(f"{len(missing)} utterances are not in the feature store "
                         f"{store_dir} (first: {missing[0]}); run features again")
    return store, rows


def train_member(task: Task, store: FeatureStore, rows: pd.DataFrame, config: Config,
                 out_dir: Path, concurrent: int = 1, resume: bool = False) -> dict:
    """Train one planned (fold, seed) model with its task config (config.for_task) into
    out_dir/<member>/; returns its line of the summary. Errors name the fold and the seed.
    Called by components/member.py's run_member alone, the one driver of a member."""
    if threads := environment.task_threads(config.train.threads, concurrent):
        torch.set_num_threads(threads)
    device = choose_device(config.train.device)
    # A checkpoint belongs to these data and settings only.
    fingerprint = hashlib.sha256(json.dumps(
        {"config": config.to_dict(), "store": store.meta["key"], "rows": sorted(rows.index)},
        sort_keys=True).encode()).hexdigest()
    if config.train.transcripts == "asr":
        # The paper's ASR setting: trained on the words the recogniser hears, as tested.
        rows, _ = recognised_rows(rows, task.split.train_ids + task.split.val_ids,
                                  Transcriber.of(config))
    started = time.perf_counter()
    # glibc's malloc is set up for training before this process starts
    # (environment.TRAINING_TUNABLES), not here: a change from inside would outlast training.
    with environment.deterministic_algorithms(device, config.train.deterministic) as enforced:
        trainer = MemberTrainer(task, store, rows, config, Path(out_dir) / task.member,
                                device, fingerprint)
        if resume:
            trainer.resume()
        result = trainer.fit()
    result.update(seconds=round(time.perf_counter() - started, 2), device=str(device),
                  environment=environment.describe(device, enforced))
    return result

