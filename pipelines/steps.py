"""The pipeline's steps in the order they run: the one place that order is written. The DAG
(pipeline.py) wires its data tasks from `DATA_STEPS`, and the in-process runner
(inprocess.py) calls the same steps from it, so the two cannot drift apart. No KFP here:
the in-process runner does without it."""

from dataclasses import dataclass

from components.outputs import Ingested, StoreFiles, Validated


@dataclass(frozen=True)
class DataStep:
    """A step that turns the output of the one before it into its own: its name is its
    module in components/, its task in the DAG and its folder in a run."""

    name: str
    reads: str  # the output of the step before it; the first reads the corpus
    writes: str  # its KFP output (what the next step reads)
    from_fetch: tuple[str, ...] = ()  # fetch's outputs it also takes (its cache key)


DATA_STEPS = (
    DataStep("ingest", reads="corpus", writes=Ingested.KFP_OUTPUT, from_fetch=("data_hash",)),
    DataStep("validate", reads=Ingested.KFP_OUTPUT, writes=Validated.KFP_OUTPUT,
             from_fetch=("drift_reference",)),
    DataStep("features", reads=Validated.KFP_OUTPUT, writes=StoreFiles.KFP_OUTPUT,
             from_fetch=("data_hash",)),
)
# Then each (fold, seed) member of the plan: trained, then evaluated (components/member.py).
MEMBER_STEPS = ("train", "evaluate")
# Every task of the DAG in the order it runs: fetch and check decide whether to train; the
# members are gathered by summarize, tracked, and registered at or above the UA floor.
ORDER = ("fetch", "check", *(step.name for step in DATA_STEPS), "plan", *MEMBER_STEPS,
         "summarize", "track", "register")
