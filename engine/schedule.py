"""Learning-rate schedules, stepwise in epochs counted from 1, as the official DAFA code."""

SCHEDULES = ('bag_of_tricks', 'trades', 'madry', 'half', 'ham', 'absld', 'constant')


def lr_at(epoch: int, *, schedule: str, base_lr: float, epochs: int) -> float:
    """The learning rate of a (1-based) epoch of a run of `epochs` epochs.

    bag_of_tricks (Pang et al., 2021; the DAFA default): x0.1 from epoch epochs-10, x0.01 from
    epochs-5. trades: x0.1 from 0.75*epochs, x0.01 from 0.9*epochs, x0.001 from epochs.
    madry: x0.1 from 0.5*epochs, x0.01 from 0.75*epochs, x0.001 from epochs (at 110 epochs,
    trades drops at 83, 99 and 110). half: x0.1 after the first half (FAAL's fine-tuning: 2
    epochs, the second at a tenth). ham: HAM's piecewise schedule of its 120 epochs, x0.1 from
    epochs / 2, x0.01 from 3/4, x0.005 from 11/12. absld: ABSLD's 300 epochs, x0.1 after
    215, 260 and 285 (scaled to other lengths in whole epochs). The fractions are compared in
    floating point, as the official code compares them. constant: base_lr throughout.
    """
    if schedule == 'bag_of_tricks':
        milestones = (epochs - 10, epochs - 5)
    elif schedule == 'trades':
        milestones = (0.75 * epochs, 0.9 * epochs, epochs)
    elif schedule == 'madry':
        milestones = (0.5 * epochs, 0.75 * epochs, epochs)
    elif schedule == 'half':  # MultiStepLR([epochs / 2]) stepped after each 0-based epoch
        milestones = (epochs / 2 + 1,)
    elif schedule == 'ham':  # x0.1 from half, x0.01 from three quarters, x0.005 from 11/12
        fraction = epoch / epochs
        return base_lr * (1 if fraction < 0.5 else 0.1 if fraction < 0.75
                          else 0.01 if fraction < 11 / 12 else 0.005)
    elif schedule == 'absld':  # x0.1 after epochs 215, 260 and 285 of 300, in integers
        milestones = tuple(k * epochs // 300 + 1 for k in (215, 260, 285))
    elif schedule == 'constant':  # e.g. FRL's fine-tuning recipe (40 epochs at lr 1e-3)
        milestones = ()
    else:
        raise ValueError(f'unknown lr schedule {schedule!r}; choose from {SCHEDULES}.')
    return base_lr * 0.1 ** sum(epoch >= m for m in milestones)
