"""Check: whether a run trains at all. Not when the champion is this very model: trained
from this data (its hash), this model code (the hashes of the files on the path from data
to model, components/lineage.py MODEL_CODE) and these values of the settings that shape a
model (the config keys declared `shapes_model=True`). A scheduled run then ends there. The
commit, files off that path (README, docs, tests), thread and worker counts, caches and
work directories, the webhook and the registry's gate settings never make it train.

One question, two askers: the pipeline's `check` task (its condition, on a cluster and under
kfp.local), and `emoalign retrain`, which asks it in its own process before it starts
kfp.local and, when the answer is no, gives it without starting the pipeline.
"""

from dataclasses import dataclass

from components.config import Config
from components.lineage import Lineage

NOTHING_TO_RETRAIN = ("nothing to retrain: the champion was trained from this data, model "
                      "code and model settings")
FORCED = "forced: trained whatever the champion was trained from"


@dataclass(frozen=True)
class Decision:
    retrain: bool
    reason: str  # why it trains, or NOTHING_TO_RETRAIN

    def markdown(self) -> str:
        """The text of the check task's `decision` output."""
        return f"# {'Retrain' if self.retrain else 'No retrain'}\n\n{self.reason}\n"


def run(config: Config, lineage: Lineage, force: bool = False) -> Decision:
    """Train when forced (`emoalign run`, `retrain --force`), when there is no champion, or
    when the data, the model code or a model-shaping setting differ from the champion's
    (registry.retrain_reason names each difference)."""
    if force:  # no need to load MLflow at all
        return Decision(True, FORCED)
    from components import registry  # MLflow: over a second to import

    reason = registry.retrain_reason(config, lineage)
    return Decision(True, reason) if reason else Decision(False, NOTHING_TO_RETRAIN)
