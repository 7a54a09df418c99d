"""Learning-rate schedules, stepwise in epochs counted from 1."""

SCHEDULES = ('bag_of_tricks', 'trades', 'madry')


def lr_at(epoch: int, *, schedule: str, base_lr: float, epochs: int) -> float:
    """The learning rate of a (1-based) epoch.

    bag_of_tricks (Pang et al., 2021; the DAFA default): x0.1 from epoch epochs-10, x0.01 from
    epochs-5. trades (the TRADES code): x0.1 from 75, x0.01 from 90, x0.001 from 100.
    madry: x0.1 from 100, x0.01 from 150.
    """
    if schedule == 'bag_of_tricks':
        milestones = (epochs - 10, epochs - 5)
    elif schedule == 'trades':
        milestones = (75, 90, 100)
    elif schedule == 'madry':
        milestones = (100, 150)
    else:
        raise ValueError(f'unknown lr schedule {schedule!r}; choose from {SCHEDULES}.')
    return base_lr * 0.1 ** sum(epoch >= m for m in milestones)
