"""The pipeline: its DAG, how it runs here and on a cluster, and the command line.

    steps.py          the steps' order, read by the DAG and the in-process runner
    pipeline.py       the KFP DAG, wiring only
    kfp_components.py the KFP components: thin adapters onto components/
    cluster.py        what each task asks of a Kubeflow cluster
    arguments.py      the pipeline's arguments, for every way a run starts
    local.py          `emoalign run`: the DAG through kfp.local, and what a run left
    task_processes.py kfp.local's tasks forked from the warm process server
    warm_server.py    processes forked from an interpreter with the libraries imported
    inprocess.py      the steps in this process, without KFP (what `emoalign audit` re-runs)
    submit.py         compile, submit and schedule on a cluster
    audit.py          `emoalign audit`: where a registered model came from, rebuilt
    cli.py            the `emoalign` command line
"""

# The DAG's name (pipeline.py), here where naming a run needs no kfp import: kfp.local names
# a run's folder <name>-<time>.
PIPELINE_NAME = "emoalign"
