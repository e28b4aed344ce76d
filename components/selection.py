"""Which weights a (fold, seed) model keeps (`train.selection`): those of the epoch with the
best validation UA, or the mean of the last epochs' weights. Each is told every epoch's
weights and validation UA, says whether training may stop, and saves its state with the
checkpoint, so a resumed run keeps the same weights as one never stopped."""

import copy

import torch

from components.config import TrainConfig


class Selection:
    """What both selections keep: the weights, and the epoch they stand for; `state` is
    what the checkpoint saves."""

    def __init__(self, train: TrainConfig, **state):
        self.train = train
        self.state = {"weights": None, "epoch": 0, "val_ua": -1.0, **state}

    @property
    def weights(self) -> dict:
        return self.state["weights"]

    @property
    def epoch(self) -> int:
        """The epoch whose weights are kept (the last one averaged, under an average)."""
        return self.state["epoch"]


class BestEpoch(Selection):
    """The weights of the epoch with the best validation UA, from `min_epochs` on (before,
    the weights move too fast for a small validation set to judge: an early lucky score
    would win over the converged model); stops after `patience` epochs without a better
    one."""

    def __init__(self, train: TrainConfig):
        super().__init__(train, stale=0)

    def observe(self, epoch: int, model: torch.nn.Module, val_ua: float | None) -> bool:
        """Take this epoch's weights if they are the best yet; says whether they were."""
        if epoch >= min(self.train.min_epochs, self.train.epochs) \
                and val_ua > self.state["val_ua"]:
            self.state.update(weights=copy.deepcopy(model.state_dict()), epoch=epoch,
                              val_ua=val_ua, stale=0)
            return True
        self.state["stale"] += 1
        return False

    def should_stop(self, next_epoch: int) -> bool:
        return (self.state["stale"] >= self.train.patience
                and next_epoch > self.train.min_epochs)


class LastEpochsAverage(Selection):
    """The mean of the last `average_epochs` epochs' weights (every epoch runs; validation,
    if any, is only watched): no small validation set can sway it."""

    def __init__(self, train: TrainConfig):
        super().__init__(train, averaged=0)
        self.first = train.epochs - min(train.average_epochs, train.epochs) + 1

    def observe(self, epoch: int, model: torch.nn.Module, val_ua: float | None) -> bool:
        if epoch >= self.first:
            n = self.state["averaged"] + 1
            current = model.state_dict()
            mean = self.state["weights"] or {k: torch.zeros_like(v)
                                             for k, v in current.items()}
            for key, value in current.items():  # a running mean, one epoch at a time
                if value.is_floating_point():
                    mean[key] = mean[key] + (value.detach() - mean[key]) / n
                else:
                    mean[key] = value.detach().clone()
            self.state.update(weights=mean, averaged=n, epoch=epoch, val_ua=val_ua)
        return False

    def should_stop(self, next_epoch: int) -> bool:
        return False


def selection_for(train: TrainConfig) -> Selection:
    return BestEpoch(train) if train.selection == "best" else LastEpochsAverage(train)
