"""The plan of a reproduce command: one training run and one evaluation per (method, sweep value,
seed), each run's train.py and eval.py arguments (resolved as the entry points will resolve them),
its parent, and whether what is on disk is the experiment asked for (its identity,
engine/identity.py): reused when it is, refused by name when it is not."""
import glob
import json
import os
from dataclasses import dataclass, field
from typing import List, Optional

from engine import checkpoint, identity, run
from engine import start as run_start
from engine.arguments import parse_args as train_arguments
from engine.best import BEST
from evaluation.arguments import evaluation_settings
from evaluation.arguments import parse_args as eval_arguments
from evaluation.schema import schema_problems
from fairness import METHODS as FAIRNESS

from .protocols import (PROTOCOLS, network_args, parent_of, recipe_args, selection_split,
                        variants)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where train.py, eval.py are


@dataclass(eq=False)  # identity: tasks are dictionary keys
class Task:
    kind: str                  # 'train' or 'eval'
    method: str
    seed: int
    folder: str                # the run folder
    setting: tuple = ()        # the swept flag's (key, value), if this run depends on it
    depends: List['Task'] = field(default_factory=list)
    epochs: int = 0            # a train task's epochs (its recipe's)
    fine_tunes: bool = False   # starts from its dependency's final model (--init_weights)
    taught: bool = False       # its dependency's final model is its teacher (Method.teacher_flag)
    network: tuple = ()        # network flags of the runs that fine-tune it (protocols.py)
    status: str = 'pending'    # pending, running, done, failed, blocked, interrupted
    reused: bool = False       # done before this command started it: made by an earlier one
    why: str = ''              # why it is blocked, and the command that repairs it
    log: str = ''

    @property
    def starts_after_parent(self) -> bool:
        """It needs its parent's final model (fine-tuned or teaching), not a checkpoint of it."""
        return self.fine_tunes or self.taught

    @property
    def name(self) -> str:
        what = f' {self.setting[0]}={self.setting[1]}' if self.setting else ''
        on = f" on {' '.join(self.network)}" if self.network else ''
        return f'{self.kind} {self.method}{what}{on} seed {self.seed}'


def number(text: str):
    """A sweep value as train.py will read it: 0.5 and 0.50 are one value."""
    try:
        return float(text)
    except ValueError:
        return text


_SHA256 = {}  # path -> ((mtime_ns, size), sha256): finished() is asked every 0.2 s


def _sha256(path: str) -> Optional[str]:
    """A file's sha256, None when it is missing."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    key = (stat.st_mtime_ns, stat.st_size)
    if _SHA256.get(path, (None,))[0] != key:
        _SHA256[path] = (key, identity.file_sha256(path))
    return _SHA256[path][1]


def _normal(value):
    """As JSON has it (tuples become lists): how results store recipes."""
    return json.loads(json.dumps(value))


class Plan:
    def __init__(self, args):
        self.args = args
        self.tasks: List[Task] = []
        self.run_args = {}  # train task -> train.py's resolved arguments
        self._data = {}  # the data arguments -> the fingerprints of that data
        trains = {}
        key, values = args.sweep or (None, [None])
        for seed in args.seeds:
            for method in args.methods:
                parent = parent_of(method, args.recipe)
                network = tuple(network_args(args, method)) if parent else ()
                for value in values:
                    if network:  # its parent's run on its own network
                        found = self._on_network(parent, seed, key, value, network, trains)
                    else:
                        found = trains.get((parent, seed, value)) or trains.get(
                            (parent, seed, None))
                    task = self._train_task(method, seed, key, value, found)
                    slot = (method, seed, value if task.setting else None)
                    if slot in trains:  # its recipe has no swept flag: one run for all values
                        continue
                    trains[slot] = task
                    self.tasks += [task, Task('eval', method, seed, task.folder, task.setting,
                                              [task], log=os.path.join(task.folder,
                                                                       'eval_stdout.log'))]

    def _on_network(self, method, seed, key, value, network, trains) -> Task:
        """The run of `method` on the network flags of the runs that start from it (FRL's
        PreAct ResNet-18 under --recipe official): one per seed (and swept value, if its recipe
        has it), trained and not evaluated; the table's row of `method` is its protocol run."""
        for slot in ((method, seed, value, network), (method, seed, None, network)):
            if slot in trains:
                return trains[slot]
        task = self._train_task(method, seed, key, value, None, network)
        trains[(method, seed, value if task.setting else None, network)] = task
        self.tasks.append(task)
        return task

    def _train_task(self, method, seed, key, value, parent, network=()) -> Task:
        setting = (key, value) if key else ()
        task = Task('train', method, seed, '', setting, [parent] if parent else [],
                    network=network)
        parsed = train_arguments(self.train_command(task))
        if key and key not in run_start.recipe_args(parsed):
            task.setting = ()  # the run does not depend on the swept flag: one for all values
            parsed = train_arguments(self.train_command(task))
        variant = method + ''.join(f'@{value}' for value in network[1::2]) + (
            f'/{key}={value}' if task.setting else '')
        task.folder = os.path.join(self.args.out, 'runs', variant, f'seed{seed}')
        task.epochs = parsed.epochs
        method_cls = FAIRNESS[parsed.rob_fairness_algorithm]
        task.taught = parent is not None and method_cls.teacher_of is not None
        task.fine_tunes = (parent is not None and not task.taught
                           and method_cls.fine_tunes is not None
                           and self.args.recipe == 'official')
        task.log = os.path.join(task.folder, 'train_stdout.log')
        parsed.model_dir = task.folder
        self.run_args[task] = parsed
        return task

    def recipe_args(self, task: Task) -> dict:
        """The recipe arguments the plan asks of a train task's run."""
        return _normal(run_start.recipe_args(self.run_args[task]))

    def branch_epoch(self, task: Task) -> Optional[int]:
        """The epoch of the parent's checkpoint a branched run starts from."""
        run_args = self.run_args[task]
        return FAIRNESS[run_args.rob_fairness_algorithm].branch_epoch(run_args)

    def evaluated(self, task: Task) -> str:
        """The checkpoint an evaluation reports (--select): the final or the best one."""
        if self.args.select == 'best_val':
            return os.path.join(task.folder, BEST)
        return run.checkpoint_path(task.folder)

    def eval_settings(self, task: Task) -> dict:
        """What the plan asks of an evaluation (eval.evaluation_settings of its command)."""
        return evaluation_settings(eval_arguments(self.command(task)[1:]),
                                            self.args.attack)

    def result_of(self, task: Task):
        """(path, result) of an evaluation: the eval_*.json in its run folder whose identity
        (engine/identity.py) is the one the plan asks for, whatever its file name: of the
        checkpoint the plan reports as it is on disk now (its sha256 fixes run, epoch and
        selection), with the plan's evaluation settings, by this code (or any, under
        --reuse_other_code). None when there is none."""
        sha = _sha256(self.evaluated(task))
        if sha is None:
            return None
        wanted = {'checkpoint_sha256': sha, 'evaluation': self.eval_settings(task),
                  'code': identity.code_fingerprint()}
        ignore = ('code',) if self.args.reuse_other_code else ()
        for path in sorted(glob.glob(os.path.join(glob.escape(task.folder), 'eval_*.json'))):
            try:
                with open(path) as f:
                    result = json.load(f)
            except (OSError, ValueError):
                continue  # torn by a failure: evaluate again
            if schema_problems(result):
                continue  # not a result the tables can read (edited or foreign): evaluate again
            found = identity.result_identity(result)
            if not identity.differences({k: found[k] for k in wanted}, wanted, ignore):
                return path, result
        return None

    def finished(self, task: Task) -> bool:
        """A run: its last epoch's metrics row and checkpoint exist (and, under --select
        best_val, its checkpoint-best.pt). An evaluation: its run finished, and a result of the
        identity the plan asks for exists (result_of)."""
        if task.kind == 'train':
            return run.finished(task.folder, task.epochs) and (
                self.args.select != 'best_val' or os.path.isfile(os.path.join(task.folder, BEST)))
        return self.finished(task.depends[0]) and self.result_of(task) is not None

    def blocked_by(self, task: Task) -> str:
        """Why a task can never start, and what repairs it."""
        if task.kind == 'train' and task.depends and not task.starts_after_parent:
            parent = task.depends[0]
            point = run.checkpoint_path(parent.folder, self.branch_epoch(task))
            if not os.path.isfile(point):
                return (f'it branches off {point}, which its finished parent run no longer '
                        f'holds; delete {parent.folder} and rerun to train the parent again')
        return 'what it needs did not finish'

    def ready(self, task: Task) -> bool:
        """Whether the task can start now: an evaluation after its run, a branched run as soon
        as its parent has written the checkpoint it branches off."""
        if task.kind == 'eval' or not task.depends or task.starts_after_parent:
            return all(self.finished(d) for d in task.depends)
        own = run.resume_point(task.folder) is not None
        return own or os.path.isfile(run.checkpoint_path(task.depends[0].folder,
                                                         self.branch_epoch(task)))

    def planned_identity(self, task: Task) -> dict:
        """The run identity (engine/identity.py) the plan asks of a train task: its recipe
        arguments, the fingerprints of the data it would train on now and, for a branch or a
        fine-tuned run, of its parent's checkpoint as it is on disk, and this code."""
        parsed = self.run_args[task]
        key = json.dumps([os.path.abspath(parsed.data_dir or '.'), {
            k: v for k, v in sorted(vars(parsed).items())
            if k in ('dataset', 'n_train', 'seed', 'val_per_class', 'rob_fairness_algorithm')
            or k.startswith('synthetic')}], default=str)
        if key not in self._data:  # the fingerprints only: a dataset per task would not fit
            data = run_start.load_data(parsed)
            self._data[key] = run_start.run_recipe(parsed, data)['data']
        data = dict(self._data[key])
        if task.depends:
            parent = task.depends[0].folder
            if task.taught:
                data['teacher_sha256'] = _sha256(run.checkpoint_path(parent))
            elif task.fine_tunes:
                data['init_weights_sha256'] = _sha256(run.checkpoint_path(parent))
            else:
                data['parent_sha256'] = _sha256(run.checkpoint_path(parent,
                                                                    self.branch_epoch(task)))
        return identity.run_identity({'args': self.recipe_args(task), 'data': data,
                                      'code': {'fingerprint': identity.code_fingerprint()}})

    def stale_runs(self) -> List[str]:
        """The run folders already holding a run of another identity, each with what differs
        and the command that repairs it."""
        stale = []
        for task in (t for t in self.tasks if t.kind == 'train'):
            point = run.resume_point(task.folder)
            if point is None:
                continue
            try:
                ckpt = checkpoint.load(point)
            except Exception as err:  # torn, or not a checkpoint
                stale.append(f'{task.folder}: its checkpoint {point} cannot be read ({err}); '
                             f'delete {task.folder} to train that run again')
                continue
            saved = ckpt.get('recipe')
            if saved is None:
                stale.append(f'{task.folder}: no recipe (written by an older version); delete '
                             f'{task.folder} to train that run again')
                continue
            found = identity.run_identity(dict(saved, args=_normal(saved['args'])))
            # A run continued by other code ran each version in turn (its code history).
            codes = {v.get('fingerprint') for v in ckpt.get('code_history', [])} | {
                found['code']}
            found['code'] = found['code'] if len(codes) == 1 else sorted(codes, key=str)
            planned = self.planned_identity(task)
            ignore = {'code'} if self.args.reuse_other_code else set()
            diff = identity.differences(found, planned, ignore)
            if diff:
                fix = (' (or pass --reuse_other_code to reuse it)'
                       if set(diff) == {'code'} else '')
                stale.append(f'{task.folder} ({identity.describe(diff)}): delete '
                             f'{task.folder} to train that run again{fix}')
            elif self.args.select == 'best_val' and not self._keeps_best(task, point):
                stale.append(f'{task.folder} (trained without --keep_best val, so it has no '
                             f'best checkpoint on validation): delete {task.folder} to train '
                             'that run again')
        return stale

    def _keeps_best(self, task: Task, point: str) -> bool:
        """Whether a run's checkpoint keeps the best epoch the way the plan asks."""
        kept = checkpoint.load(point).get('best')
        return bool(kept) and kept['split'] == 'val' and (
            kept['criterion'] == self.run_args[task].best_criterion)

    def train_command(self, task: Task) -> List[str]:
        """train.py's arguments for a run, without --resume."""
        a = self.args
        proto = PROTOCOLS[a.protocol]
        loss, algorithm = variants()[task.method]
        cmd = ['--model', proto.model, '--loss', loss, '--rob_fairness_algorithm', algorithm,
               '--epochs', str(a.epochs), '--seed', str(task.seed), '--device', a.device,
               '--model_dir', task.folder or a.out, *proto.train_args]
        if a.protocol != 'tiny':
            cmd += ['--dataset', a.dataset]
        if proto.n_train:
            cmd += ['--n_train', str(proto.n_train)]
        cmd += recipe_args(a, task.method) + list(task.network)
        if a.select == 'best_val':
            cmd += ['--keep_best', 'val']
            if not FAIRNESS[algorithm].validation_fraction and not any(
                    arg.split('=')[0] == '--val_per_class' for arg in a.train_args):
                cmd += ['--val_per_class',
                        str(selection_split(train_arguments(cmd + a.train_args)))]
        cmd += a.train_args
        if task.setting:
            cmd += [f'--{task.setting[0]}', task.setting[1]]
        return cmd

    def command(self, task: Task) -> List[str]:
        a = self.args
        if task.kind == 'eval':
            cmd = [os.path.join(ROOT, 'eval.py'), '--checkpoint', self.evaluated(task),
                   '--attack', a.attack, '--device', a.device, '--no_progress', '--out',
                   task.folder]
            cmd += ['--n_eval', str(a.n_eval)] if a.n_eval else []
            aa = a.n_autoattack and a.attack == 'all'
            return cmd + (['--n_autoattack', str(a.n_autoattack)] if aa else [])
        cmd = [os.path.join(ROOT, 'train.py')] + self.train_command(task)
        if task.taught:  # the parent run's final model teaches
            flag = FAIRNESS[self.run_args[task].rob_fairness_algorithm].teacher_flag
            cmd += [f'--{flag}', run.checkpoint_path(task.depends[0].folder)]
        point = run.resume_point(task.folder)
        if point:  # resume where it stopped
            cmd += ['--resume', point]
        elif task.fine_tunes:  # start from the parent run's final model
            cmd += ['--init_weights', run.checkpoint_path(task.depends[0].folder)]
        elif task.depends and not task.taught:  # branch off the parent run
            cmd += ['--resume', run.checkpoint_path(task.depends[0].folder,
                                                    self.branch_epoch(task))]
        return cmd
