"""DAFA as a Method (fairness.base): trains plainly for tau epochs, then takes the class
similarity recorded during epoch tau to class weights and margins (dafa.rule) for the rest of
training. A DAFA run may branch off any plain run's checkpoint of epoch tau: every plain run
records S during its epoch tau.
"""
import os

import torch

import defaults as D
from engine.cli import UserError, check_finite
from fairness.base import Method

from .rule import class_weights, max_safe_lambda


def check_class_weights(weights: torch.Tensor, similarity: torch.Tensor, lam: float,
                        class_names=None) -> None:
    """UserError if a weight is <= 0: its margin W*eps would vanish or flip sign."""
    bad = (weights <= 0).nonzero().flatten().tolist()
    if not bad:
        return
    i = bad[0]
    name = f' ({class_names[i]})' if class_names else ''
    raise UserError(
        f'DAFA weight of class {i}{name} is {weights[i]:.4f} <= 0 with --dafa_lambda {lam}; '
        f'lambdas below {max_safe_lambda(similarity):.4f} keep every weight positive for this '
        'similarity matrix: rerun with a smaller --dafa_lambda (e.g. branch off the warm-up '
        'checkpoint with --resume).')


class DAFA(Method):
    name = 'dafa'
    label = 'DAFA'
    paper = ('Hyungyu Lee et al.', 'ICLR 2024')
    branches_from = ('none',)
    parent_flags = ('dafa_warmup',)  # a plain run records S during epoch tau

    @staticmethod
    def add_arguments(group) -> None:
        group.add_argument('--dafa_warmup', type=int, default=D.DAFA_WARMUP,
                           help='DAFA: tau, the plain epochs; the class similarity is recorded '
                                'during epoch tau')
        group.add_argument('--dafa_lambda', type=float,
                           help='DAFA: strength lambda (default: ' + ', '.join(
                               f'{v:g} for {k}' for k, v in D.DAFA_LAMBDA.items())
                           + f', {D.DAFA_LAMBDA_DEFAULT:g} otherwise)')

    @classmethod
    def check_arguments(cls, args) -> None:
        if args.dafa_lambda is None:
            args.dafa_lambda = D.DAFA_LAMBDA.get(args.dataset, D.DAFA_LAMBDA_DEFAULT)
        check_finite(args, 'dafa_lambda', low=0)
        if not 1 <= args.dafa_warmup < args.epochs:
            raise UserError(f'--dafa_warmup {args.dafa_warmup} must be between 1 and --epochs '
                            f'{args.epochs} - 1 (DAFA trains the epochs after it).')

    @classmethod
    def branch_epoch(cls, args) -> int:
        return args.dafa_warmup

    @classmethod
    def parent_records(cls, args) -> dict:
        return {args.dafa_warmup: ('similarity',)}

    def __init__(self, args, num_classes, device):
        super().__init__(args, num_classes, device)
        self.tau = args.dafa_warmup
        self.similarity = None  # (C, C) float64, CPU, recorded during epoch tau
        self.weights = None     # (C,) float32, CPU, once computed

    def _apply(self, class_names=None) -> None:
        weights = class_weights(self.similarity, self.args.dafa_lambda)
        check_class_weights(weights, self.similarity, self.args.dafa_lambda, class_names)
        self.weights = weights
        # TRADES: the clean cross-entropy is weighted, the KL is not (the official code);
        # PGD-AT's only term is the adversarial cross-entropy.
        robust = weights if self.args.loss == 'pgd' else 1.0
        self.tables.set(natural=weights, robust=robust, radius=weights, step=weights)

    def records(self, epoch):
        return ('similarity',) if epoch == self.tau else ()

    def after_epoch(self, epoch, ctx, recorded, row) -> None:
        if epoch != self.tau:
            return
        self.similarity = recorded['similarity']
        row['similarity_diag'] = self.similarity.diagonal().tolist()
        self._apply(ctx.class_names)
        ctx.log('DAFA class weights: ' + ', '.join(
            f'{name} {w:.3f}' for name, w in zip(ctx.class_names, self.weights.tolist())))
        row['class_weights'] = self.weights.tolist()

    def state_dict(self) -> dict:
        # The weights are recomputed on load; saved for eval.py's figure.
        return {'similarity': self.similarity, 'similarity_epoch': self.tau,
                'class_weights': self.weights}

    def load_state_dict(self, state, epoch) -> None:
        self.similarity = state.get('similarity')
        recorded = state.get('similarity_epoch', self.tau)
        if self.similarity is not None and recorded != self.tau:
            raise UserError(f'--resume: the checkpoint\'s class similarity was recorded during '
                            f'epoch {recorded}, this run asks for --dafa_warmup {self.tau}; pass '
                            f'--dafa_warmup {recorded}.')
        if epoch >= self.tau:
            if self.similarity is None:
                raise UserError(f'--resume: the checkpoint is past epoch {self.tau} but holds '
                                'no class similarity; resume from its checkpoint-epochTAU.pt.')
            # Recomputed, not loaded: identical for a DAFA checkpoint, and what lets a DAFA run
            # with another lambda continue its own warm-up checkpoint.
            self._apply()

    def branch(self, records, epoch) -> None:
        recorded = records.get('similarity')
        if recorded is None:
            raise UserError('--resume: the checkpoint holds no class similarity; a DAFA run '
                            "branches off a plain run's checkpoint of epoch --dafa_warmup.")
        if recorded['epoch'] != self.tau:
            raise UserError(f"--resume: the checkpoint's class similarity was recorded during "
                            f"epoch {recorded['epoch']}, this run asks for --dafa_warmup "
                            f"{self.tau}; pass --dafa_warmup {recorded['epoch']}, or branch "
                            f'off a plain run whose --dafa_warmup was {self.tau}.')
        self.similarity = recorded['value']
        self._apply()

    def method_state(self) -> dict:
        return {} if self.weights is None else {'class_weights': self.weights.tolist()}

    @classmethod
    def figures(cls, state, class_names, out_dir):
        from evaluation.figures import dafa_figure  # matplotlib: only when drawing
        similarity = state.get('similarity')
        if similarity is None:
            return []
        path = dafa_figure(class_names, state.get('class_weights'), similarity,
                           os.path.join(out_dir, 'eval_dafa_weights_similarity.png'))
        return [path] if path else []
