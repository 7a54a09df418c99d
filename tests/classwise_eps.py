"""A complete robust-fairness method in one file, written as a user adds one (README, "Add a
method"): class-wise epsilon from the warm-up. During epoch --classeps_warmup it records each
class's robust accuracy on the training attacks; from then on class c trains at radius
(1 - strength * (mean accuracy - accuracy of c)) * eps, so the least robust classes get a
smaller, easier margin. tests/test_new_method.py runs it through train.py, eval.py and
scripts/reproduce.py without any other file changed (registered there with fairness.register,
and through FAIRNESS_PLUGINS=classwise_eps in child processes). It imports Method from
fairness.base, so the same file also works copied into fairness/ (README, "Add a method")."""
from engine.cli import UserError, check_finite
from fairness.base import Method


class ClassEps(Method):
    name = 'classeps'
    label = 'ClassEps'

    @staticmethod
    def add_arguments(group) -> None:
        group.add_argument('--classeps_warmup', type=int, default=1,
                           help='ClassEps: the epoch whose training robust accuracy sets the radii')
        group.add_argument('--classeps_strength', type=float, default=0.5,
                           help='ClassEps: how far a class radius moves per unit of accuracy gap')

    @classmethod
    def check_arguments(cls, args) -> None:
        check_finite(args, 'classeps_strength', low=0, high=1)
        if not 1 <= args.classeps_warmup < args.epochs:
            raise UserError(f'--classeps_warmup {args.classeps_warmup} must be between 1 and '
                            f'--epochs {args.epochs} - 1.')

    def __init__(self, args, num_classes, device):
        super().__init__(args, num_classes, device)
        self.radius = None  # (C,) float32, CPU, after the warm-up

    def records(self, epoch):
        return ('class_accuracy',) if epoch == self.args.classeps_warmup else ()

    def after_epoch(self, epoch, ctx, recorded, row) -> None:
        if epoch == self.args.classeps_warmup:
            accuracy = recorded['class_accuracy']
            gap = accuracy.mean() - accuracy
            self.radius = (1 - self.args.classeps_strength * gap).float()
            self.tables.set(radius=self.radius, step=self.radius)

    def state_dict(self) -> dict:
        return {'radius': self.radius}

    def load_state_dict(self, state, epoch) -> None:
        self.radius = state['radius']
        if self.radius is not None:
            self.tables.set(radius=self.radius, step=self.radius)

    def method_state(self) -> dict:
        return {} if self.radius is None else {'radius': self.radius.tolist()}
