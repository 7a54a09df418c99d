"""The best checkpoint of a run (train.py --keep_best): the epoch whose model scores highest
under PGD on a stated split by a stated criterion, kept as checkpoint-best.pt beside the final
model.

A run reports its final model. The best one is a second, opt-in report: selected on the
validation split (--keep_best val) it is model selection on held-out training data; selected on
the test set (--keep_best test) it has read the data it reports, and exists only to compare with
papers that did so: every result, table and card built on it says so
(evaluation.tables.selection_label).

The best model so far is part of every checkpoint ('best', with its weights), so a resumed run
continues the same selection. A branching method's selection is its own: a run branched off a
parent's warm-up, or a DAFA run from scratch, selects among the epochs after the branch point.
"""
from typing import Optional

from .checkpoint import cpu_copy

BEST = 'checkpoint-best.pt'
SPLITS = {'val': 'the validation split', 'test': 'the test set'}
CRITERIA = {'avg': 'average', 'avg+worst': 'average + worst class'}


def score(summary: dict, criterion: str) -> float:
    """The criterion's value (percent points) of an evaluation summary (metrics.summarize)."""
    return summary['avg'] + (summary['worst'] if criterion == 'avg+worst' else 0.0)


class BestCheckpoint:
    """The best epoch so far under one split, attack and criterion, with a CPU copy of what
    checkpoint-best.pt holds of it (the model, the evaluated model, the method's state)."""

    def __init__(self, split: str, criterion: str, attack: str):
        self.split, self.criterion, self.attack = split, criterion, attack
        self.epoch: Optional[int] = None
        self.score: Optional[float] = None
        self.snapshot: Optional[dict] = None
        self.written: Optional[int] = None  # the epoch checkpoint-best.pt holds in this folder

    def describe(self) -> dict:
        """What checkpoint-best.pt and its results record as their 'selection'."""
        return {'split': self.split, 'criterion': self.criterion, 'attack': self.attack,
                'epoch': self.epoch, 'score': self.score}

    def offer(self, epoch: int, summary: dict, snapshot) -> bool:
        """Keep this epoch if it scores strictly higher (ties keep the earlier epoch);
        snapshot() gives its weights, called only then. Whether it was kept."""
        value = score(summary, self.criterion)
        if self.score is not None and value <= self.score:
            return False
        self.epoch, self.score = epoch, value
        self.snapshot = cpu_copy(snapshot())
        return True

    def state_dict(self) -> dict:
        return dict(self.describe(), snapshot=self.snapshot)

    def load_state_dict(self, state: dict) -> None:
        if (state['split'], state['criterion'], state['attack']) != (
                self.split, self.criterion, self.attack):
            raise ValueError(f"the checkpoint selects by {state['attack']} "
                             f"{CRITERIA[state['criterion']]} on {SPLITS[state['split']]}, "
                             f'this run by {self.attack} {CRITERIA[self.criterion]} on '
                             f'{SPLITS[self.split]}')
        self.epoch, self.score, self.snapshot = state['epoch'], state['score'], state['snapshot']
