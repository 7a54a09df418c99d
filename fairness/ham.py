"""HAM, hard adversarial example mining (Lin et al., "Hard Adversarial Example Mining for
Improving Robust Fairness", IEEE TIFS 2025), on PGD-AT.

After --ham_warmup epochs of plain PGD-AT, each batch's attack (model in eval mode, PGD on the
cross-entropy from a uniform start) checks its examples after --ham_classify_step steps: those
already misclassified are the hard ones, kept; the rest are dropped. The kept examples finish the
attack, and the batch's loss is the mean cross-entropy over them alone, from their own
train-mode forward (BatchNorm's batch statistics are theirs). A batch with fewer than two kept
is skipped.
Official code: yyl-github-1896/HAM (HEAD e3ee5ff), attack_generator.py l. 260-352
(GA_PGD_early2: the mask at l. 327-344), GAIRAT_wrong_early_time.py l. 185-192 (which attack
per epoch), 201-215 and 262-280 (the loss on the kept targets, weights of one),
515_6_wrong_early3_epo50.sh (--classify_step 3 --begin_epoch 50).

Departures: the dropped examples keep being stepped with the kept ones (each example's steps
depend on itself alone in eval mode, so the kept ones end where the official attack leaves
them; the official code saves that compute). A batch with none kept is skipped, where the
official loss meets an empty target and fails; so is one with a single kept example, which a
BatchNorm layer on a 1 x 1 feature map (small-cnn's) cannot normalise in train mode. The official attack normalises its inputs with
CIFAR-100's statistics while training uses CIFAR-10's (attack_generator.py l. 7-13,
GAIRAT_wrong_early_time.py l. 135-142); here both use the run's --normalize. The paper's
reweighting of the hard examples is commented out in the official code (l. 264-267, weights of
one) and is not offered: its rule could not be checked against the paper.
"""
import functools

import torch

from engine.cli import UserError
from losses.output import upcast
from losses.pgd import pgd_attack

from .base import AfterWarmup, preact_normalized, scaled_epochs


def mine_hard_examples(model, x, y, x_start, *, eps, step_size, num_steps: int,
                       classify_step: int):
    """(x_adv, keep): PGD-AT's attack with the keep mask of the examples misclassified (eval
    mode, as the caller leaves the model) after classify_step steps."""
    steps = min(classify_step, num_steps)
    x_adv, _ = pgd_attack(model, x, y, x_start, eps=eps, step_size=step_size, num_steps=steps)
    with torch.no_grad():
        keep = upcast(model(x_adv)).argmax(1) != y
    x_adv, _ = pgd_attack(model, x, y, x_adv, eps=eps, step_size=step_size,
                          num_steps=num_steps - steps)
    return x_adv, keep


class HAM(AfterWarmup):
    name = 'ham'
    label = 'HAM'
    rule = 'the mining'
    paper = ('Chenhao Lin, Xiang Ji, Yulong Yang, Qian Li, Zhengyu Zhao, Zhe Peng, Run Wang, '
             'Liming Fang, Chao Shen', 'IEEE TIFS 2025')
    losses = ('pgd',)
    cuda_graph = False  # the kept count sizes the forward

    @classmethod
    def official_args(cls, epochs, model):
        # GAIRAT_wrong_early_time.py l. 31-37 (120 epochs, weight decay 2e-4, momentum 0.9
        # without Nesterov, eps 0.031, 10 steps of 0.007), 93-104 (lr 0.1, x0.1 at half, x0.01
        # at three quarters, x0.005 from 11/12), 515_6_wrong_early3_epo50.sh (PreAct ResNet-18,
        # --classify_step 3, --begin_epoch 50: 49 plain epochs), l. 135-142 (CIFAR-10's
        # statistics).
        total = scaled_epochs(120, epochs)
        return (['--epochs', str(total), '--lr', '0.1', '--lr_schedule', 'ham',
                 '--no-nesterov', '--weight_decay', '2e-4', '--ham_classify_step', '3',
                 '--ham_warmup', str(min(scaled_epochs(49, epochs), total - 1))]
                + preact_normalized(model))

    @classmethod
    def add_arguments(cls, group) -> None:
        group.add_argument('--ham_classify_step', type=int, default=3,
                           help='HAM: the attack step after which the examples still classified '
                                'correctly are dropped (official script 3, '
                                '515_6_wrong_early3_epo50.sh; the argparse default is 5)')
        cls.add_warmup_argument(group)

    @classmethod
    def check_arguments(cls, args) -> None:
        if not 1 <= args.ham_classify_step <= args.pgd_num_steps:
            raise UserError(f'--ham_classify_step {args.ham_classify_step} must be between 1 '
                            f'and --pgd_num_steps {args.pgd_num_steps} (official 3 of 10).')
        super().check_arguments(args)

    def __init__(self, args, num_classes, device):
        super().__init__(args, num_classes, device)
        self.kept = torch.zeros(num_classes, dtype=torch.float64, device=device)
        self.seen = torch.zeros(num_classes, dtype=torch.float64, device=device)
        self.kept_fraction = None  # (K,) the last mining epoch's, CPU

    def loss(self, default):
        return functools.partial(super().loss(default), attack=self.attack)

    def attack(self, model, x, y, x_start, *, eps, step_size, num_steps):
        if not self.active:
            return pgd_attack(model, x, y, x_start, eps=eps, step_size=step_size,
                              num_steps=num_steps)
        x_adv, keep = mine_hard_examples(model, x, y, x_start, eps=eps, step_size=step_size,
                                         num_steps=num_steps,
                                         classify_step=self.args.ham_classify_step)
        self.kept.index_add_(0, y, keep.double())
        self.seen.index_add_(0, y, torch.ones_like(keep, dtype=torch.float64))
        return x_adv, keep

    def before_epoch(self, epoch, ctx) -> None:
        super().before_epoch(epoch, ctx)
        self.kept.zero_()
        self.seen.zero_()

    def after_epoch(self, epoch, ctx, recorded, row) -> None:
        if self.active:
            ctx.all_sum(self.kept, self.seen)
            self.kept_fraction = (self.kept / self.seen.clamp(min=1)).float().cpu()

    def state_dict(self) -> dict:
        return {'kept_fraction': self.kept_fraction}

    def load_state_dict(self, state, epoch) -> None:
        self.kept_fraction = state.get('kept_fraction')

    def method_state(self) -> dict:
        return {} if self.kept_fraction is None else {
            'kept_fraction': self.kept_fraction.tolist()}
