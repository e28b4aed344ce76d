"""One (fold, seed) member of a run, from its task config to its evaluation: the one way a
member is run. The pipeline's train task, the in-process runner (`emoalign audit`), the
fusion benchmark and `emoalign train` all call `run_member`; the pipeline's evaluate task,
a step of its own on a cluster, evaluates what its train task made with evaluate.run, as
`run_member` does here."""

from pathlib import Path

import pandas as pd

from components import evaluate, train
from components.config import Config
from components.feature_store import FeatureStore
from components.folds import Task, plan
from components.reporting import write_train_summary


def run_member(task: Task, store: FeatureStore, rows: pd.DataFrame, config: Config,
               model_dir: Path, evaluation_dir: Path | None = None, concurrent: int = 1,
               resume: bool = False) -> dict:
    """Train `task` with its task config (config.for_task: its seed alone) into
    model_dir/<member>/, write model_dir's train summary of it, and, given evaluation_dir,
    evaluate it there. Returns its line of the train summary, with its `metrics` when
    evaluated. `concurrent`: members sharing this machine's cores."""
    task_config = config.for_task(task.seed)
    result = train.train_member(task, store, rows, task_config, Path(model_dir), concurrent,
                                resume)
    write_train_summary([result], model_dir, task_config)
    if evaluation_dir is not None:
        result = {**result, "metrics": evaluate.evaluate_model(Path(model_dir), store, rows,
                                                              Path(evaluation_dir),
                                                              task_config)}
    return result


def train_all(store_dir: Path, manifest_path: Path, out_dir: Path, config: Config,
              resume: bool = False) -> dict:
    """`emoalign train`: every (fold, seed) member of the plan, one after the other, into
    out_dir; returns the summary over all of them (what the pipeline's tasks, fanned out,
    add up to through `summarize`)."""
    store, rows = train.load_inputs(store_dir, manifest_path, config)
    results = [run_member(task, store, rows, config, out_dir, resume=resume)
               for task in plan(rows, config)]
    return write_train_summary(results, out_dir, config)
