"""Check: whether a run trains at all. Not when the champion was trained from this very data,
code and config (the data hash, commit and config hash its version is tagged with): a
scheduled run then ends there.

One question, two askers: the pipeline's `check` task (its condition, on a cluster and under
kfp.local), and `emoalign retrain`, which asks it in its own process before it starts
kfp.local and, when the answer is no, gives it without starting the pipeline.
"""

from dataclasses import dataclass

from components.config import Config
from components.lineage import Lineage

NOTHING_TO_RETRAIN = ("nothing to retrain: the champion was trained from this data, code and "
                      "config")
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
    when the data, code or config differ from the champion's."""
    if force:  # no need to load MLflow at all
        return Decision(True, FORCED)
    from components import registry  # MLflow: over a second to import

    reason = registry.retrain_reason(config, lineage)
    return Decision(True, reason) if reason else Decision(False, NOTHING_TO_RETRAIN)
