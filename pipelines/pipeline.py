"""The emoalign DAG: wiring only. Step logic lives in `components/`, the KFP components
(thin adapters onto it) in `kfp_components.py`, what each task asks of a cluster in
`cluster.py`, the order of the data steps in `steps.py` (which the in-process runner reads
too).

The gates are the tasks' typed outputs: `check`'s bool `retrain` and `summarize`'s bool
`passed` (each with a `reason` string beside it).

The whole DAG runs inside a `dsl.ExitHandler` whose exit task, `notify`, reports the end of
the run to notify.webhook, succeeded or failed.

The (fold, seed) tasks fan out through `dsl.ParallelFor`, and `summarize` collects them
(`dsl.Collected`). A ParallelFor's parallelism is part of the compiled DAG, so the pipeline
is built for one: `build_pipeline(train.parallelism)`; kfp.local also shares one machine's
cores among the tasks running at once (`tasks_per_machine`).
"""

from kfp import dsl

from pipelines import PIPELINE_NAME
from pipelines import kfp_components as steps  # each step as a KFP component
from pipelines.cluster import RUN_DEADLINE_S, configure
from pipelines.steps import DATA_STEPS

FAN_OUT = "fold-seed"  # the ParallelFor's name


def _fan_out(store, validated, config_yaml: str, parallelism: int, tasks_per_machine: int):
    plan = configure(steps.plan(validated=validated, config_yaml=config_yaml,
                                tasks_per_machine=tasks_per_machine), "plan")
    with dsl.ParallelFor(plan.output, parallelism=parallelism, name=FAN_OUT) as task:
        train = configure(steps.train(store=store, validated=validated,
                                      config_yaml=task.config_yaml, fold=task.fold,
                                      concurrent=task.concurrent), "train")
        evaluate = configure(steps.evaluate(model=train.outputs["model"], store=store,
                                            validated=validated, config_yaml=task.config_yaml,
                                            concurrent=task.concurrent), "evaluate")
    return configure(steps.summarize(models=dsl.Collected(train.outputs["model"]),
                                     evaluations=dsl.Collected(evaluate.outputs["evaluation"]),
                                     config_yaml=config_yaml), "summarize")


def _data_steps(fetched) -> dict:
    """ingest, validate and features in DATA_STEPS' order, each reading the output of the
    one before; returns every output by name."""
    made = {"corpus": fetched.outputs["corpus"]}
    data_config = fetched.outputs["data_config_yaml"]  # their sections only: the cache key
    for step in DATA_STEPS:
        component = getattr(steps, step.name)
        task = configure(component(**{step.reads: made[step.reads]}, config_yaml=data_config,
                                   **{name: fetched.outputs[name] for name in step.from_fetch}),
                         step.name)
        made[step.writes] = task.outputs[step.writes]
    return made


def _train_and_register(fetched, config_yaml: str, parallelism: int, tasks_per_machine: int):
    folder, digest = fetched.outputs["corpus"], fetched.outputs["data_hash"]
    made = _data_steps(fetched)
    validated = made["validated"]
    summary = _fan_out(made["store"], validated, config_yaml, parallelism, tasks_per_machine)
    done = dict(manifest=made["manifest"], validated=validated,
                model=summary.outputs["model"], evaluation=summary.outputs["evaluation"],
                config_yaml=config_yaml)
    track = configure(steps.track(**done, corpus=folder, data_hash=digest,
                                  git_sha=fetched.outputs["git_sha"],
                                  git_dirty=fetched.outputs["git_dirty"],
                                  pipeline_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER), "track")
    with dsl.If(summary.outputs["Output"] == True, name="ua-at-or-above-floor"):
        configure(steps.register(**done, run_id=track.outputs["Output"]), "register")


def _fetch_check_and_train(corpus, config_yaml, force, parallelism: int,
                           tasks_per_machine: int, **lineage):
    fetch = configure(steps.fetch(corpus=corpus, config_yaml=config_yaml, **lineage), "fetch")
    config_yaml = fetch.outputs["config_yaml"]  # with the run's protocol and seed
    check = configure(steps.check(config_yaml=config_yaml, corpus=fetch.outputs["corpus"],
                                  data_hash=fetch.outputs["data_hash"],
                                  git_sha=fetch.outputs["git_sha"],
                                  git_dirty=fetch.outputs["git_dirty"], force=force),
                      "check")
    with dsl.If(check.outputs["Output"] == True,
                name="data-code-or-config-changed"):
        _train_and_register(fetch, config_yaml, parallelism, tasks_per_machine)


def build_pipeline(parallelism: int = 0, tasks_per_machine: int = 1,
                   exit_task_notifies: bool = True):
    """The pipeline with at most `parallelism` (fold, seed) tasks at once (0: no limit), of
    which `tasks_per_machine` share one machine's cores (1: each task has its own node).
    Its exit task posts to notify.webhook however the run ends, unless
    `exit_task_notifies` is False (kfp.local, whose final status names no failed task: the
    local runner sends the same payload, failed task and reason included).
    `champion_reference` is the champion the drift check compares with, when the submitter
    has resolved it (`emoalign run` has); left empty, the fetch task resolves it."""

    @dsl.pipeline(name=PIPELINE_NAME,
                  description="IEMOCAP speech + text emotion recognition (Xu et al. 2019)",
                  pipeline_config=dsl.PipelineConfig(active_deadline_seconds=RUN_DEADLINE_S))
    def emoalign_pipeline(corpus: str, config_yaml: str, data_hash: str = "",
                          git_sha: str = "", git_dirty: bool = False, dvc_repo: str = "",
                          dvc_rev: str = "", protocol: str = "", seed: int = -1,
                          force: bool = True, champion_reference: str = ""):
        notify = configure(steps.notify(config_yaml=config_yaml,
                                        pipeline_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                                        send=exit_task_notifies), "notify")
        with dsl.ExitHandler(notify, name="notify-when-done"):
            _fetch_check_and_train(corpus, config_yaml, force, parallelism,
                                   tasks_per_machine, dvc_repo=dvc_repo, dvc_rev=dvc_rev,
                                   data_hash=data_hash, git_sha=git_sha,
                                   git_dirty=git_dirty, protocol=protocol, seed=seed,
                                   champion_reference=champion_reference)

    return emoalign_pipeline


emoalign_pipeline = build_pipeline()
