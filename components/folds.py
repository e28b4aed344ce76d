"""The run's (fold, seed) plan: which utterances each cross-validation fold trains, validates
and tests on, each fold checked before anything trains. Free of torch, so the plan task
starts in a fraction of a second."""

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from components import outputs
from components.config import Config
from components.errors import UserError


class TrainError(UserError):
    """Training cannot go on (an empty fold, a class missing, a NaN loss); the message says
    which."""


@dataclass
class FoldSplit:
    """Which utterances one cross-validation fold trains, validates and tests on."""

    name: str
    test_session: int
    val_speaker: str  # comma-separated when there are several
    train_ids: list[str]
    val_ids: list[str]
    test_ids: list[str]
    seed: int = 0

    @property
    def member(self) -> str:
        """The (fold, seed) model's name: its folder, and its artifact in the registry."""
        return member_name(self.name, self.seed)


def member_name(fold: str, seed: int) -> str:
    return f"{fold}-seed{seed}"


def make_folds(labelled: pd.DataFrame, config: Config) -> list[FoldSplit]:
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
        # the test one), so early stopping never sees a test speaker; none at all when
        # validation_speakers is 0.
        wanted = config.train.validation_speakers
        n_val = min(wanted, len(train_sessions) - 1) or (1 if wanted else 0)
        val_speakers = [f"Ses0{train_sessions[(test + k) % len(train_sessions)]}"
                        f"{'FM'[(config.seed + k) % 2]}" for k in range(n_val)]
        in_train = labelled["session"] != test
        is_val = labelled["speaker"].isin(val_speakers)
        folds.append(FoldSplit(
            name=f"session{test}", test_session=test, val_speaker=",".join(val_speakers),
            train_ids=labelled.loc[in_train & ~is_val, "utt_id"].tolist(),
            val_ids=labelled.loc[in_train & is_val, "utt_id"].tolist(),
            test_ids=labelled.loc[~in_train, "utt_id"].tolist(), seed=config.seed))
    return folds


def check_fold(fold: FoldSplit, labels: dict[str, str], classes: list[str]) -> None:
    if not fold.train_ids:
        raise TrainError(f"fold {fold.name} seed {fold.seed}: the training set is empty")
    if fold.val_speaker and not fold.val_ids:
        raise TrainError(f"fold {fold.name} seed {fold.seed}: validation speaker(s) "
                         f"{fold.val_speaker} have no labelled utterances")
    present = {labels[u] for u in fold.train_ids}
    for name in classes:
        if name not in present:
            raise TrainError(f"fold {fold.name} seed {fold.seed}: class '{name}' has no "
                             "training utterances")


@dataclass
class Task:
    """One (fold, seed) model to train: what the plan makes, and what every way of running
    a plan (`emoalign train`, the in-process runner, the KFP fan-out) trains, one call of
    member.run_member each."""

    fold_index: int  # its place in make_folds (seeds each fold's initialisation)
    split: FoldSplit

    @property
    def seed(self) -> int:
        return self.split.seed

    @property
    def member(self) -> str:
        return self.split.member

    def item(self) -> dict:
        """What the KFP fan-out passes each task as parameters."""
        return {"fold": self.split.name, "seed": self.seed, "member": self.member}


def plan(rows: pd.DataFrame, config: Config) -> list[Task]:
    """The run's (fold, seed) tasks, fold by fold, each fold checked before anything
    trains. `rows`: the labelled rows (outputs.labelled_rows)."""
    labels = rows["label"].to_dict()
    tasks = []
    for seed in config.seeds:
        for index, fold in enumerate(make_folds(rows, config.for_task(seed))):
            check_fold(fold, labels, config.ingest.classes)
            tasks.append(Task(index, fold))
    return sorted(tasks, key=lambda t: (t.fold_index, t.seed))


def task_of(rows: pd.DataFrame, config: Config, fold: str) -> Task:
    """The plan's task for `fold` under a one-seed task config: how a fanned-out task, which
    receives only its fold's name and seed as parameters, finds its split. The plan is
    deterministic, so it is the same split the plan step checked."""
    tasks = {t.split.name: t for t in plan(rows, config.for_task(config.seed))}
    if fold not in tasks:
        raise TrainError(f"no fold {fold!r} under protocol {config.protocol} (folds: "
                         f"{', '.join(tasks)})")
    return tasks[fold]


def plan_items(manifest_path: Path, config: Config) -> list[dict]:
    """The plan as the KFP fan-out's items: {fold, seed, member} each."""
    rows = outputs.labelled_rows(manifest_path, config.ingest.classes, config.ingest.subset)
    return [task.item() for task in plan(rows, config)]
