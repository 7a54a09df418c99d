"""Export an evaluated model for other tools: its bare state_dict and a model card.

    python scripts/export.py --result runs/cifar10_trades_dafa/eval_all_epoch110.json \
        --out exported/trades_dafa

Reads one eval.py result and the checkpoint it evaluated (refused if that file has changed
since: another epoch or recipe), and writes into --out:
- model.pt: the evaluated weights as a plain state_dict (model.state_dict() keys, no wrapper),
  what TRADES / AutoAttack users pass to load_state_dict: for CFA its weight average, as
  evaluated. The model takes images in [0, 1] and normalises nothing (models/__init__.py).
- model_card.json: RobustBench's fields (name, authors, venue, architecture, eps as a string,
  dataset, clean_acc, autoattack_acc, number_forward_passes, additional_data, reported,
  footnote) filled from the run's recipe and the result, then this code's block: per-class
  clean / PGD / AutoAttack accuracy, worst class, rho against the result's baseline, the exact
  attack settings, which checkpoint is reported, and the recipe.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

from engine import identity, run  # noqa: E402
from engine.cli import ArgumentParser, UserError, run_main  # noqa: E402
from evaluation import schema, tables  # noqa: E402
from evaluation.checkpoint_io import read_checkpoint  # noqa: E402
from evaluation.runner import display_name  # noqa: E402
from fairness import METHODS  # noqa: E402

# The adversarial-training losses' papers (a method's own is Method.paper).
LOSS_PAPERS = {'trades': ('Hongyang Zhang et al.', 'ICML 2019'),
               'pgd': ('Aleksander Madry et al.', 'ICLR 2018')}


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--result', required=True, metavar='RESULT.json',
                   help="an eval_*.json of eval.py; its checkpoint is what gets exported")
    p.add_argument('--out', required=True, metavar='DIR', help='folder for model.pt and '
                   'model_card.json')
    p.add_argument('--dataset_name', metavar='NAME',
                   help="the card's dataset for a run on an image folder, whose contents the "
                        'run cannot know (e.g. cifar10 for a CIFAR-10 copy); default: the run\'s '
                        '--dataset')
    return p.parse_args(argv)


def _footnote(result: dict, ckpt):
    """The card's footnote (code, schedule, which checkpoint, AutoAttack's subset) and the
    name of the checkpoint it reports."""
    args = ckpt.args
    has_aa = 'autoattack' in result
    footnote = (f"Trained with this repository (commit {ckpt.recipe['code']['commit'][:12]}"
                if ckpt.recipe else 'Trained with this repository')
    chosen = result.get('selection')
    if chosen:
        reported = f"best_{chosen['split']}"
        which = f'the {tables.selection_label(chosen)}'
    elif result['epoch'] == args['epochs']:
        reported, which = 'final', f"the final checkpoint (epoch {result['epoch']})"
    else:
        reported = f"epoch {result['epoch']}"
        which = f"the checkpoint of epoch {result['epoch']}, not the final one,"
    footnote += (f"), {args['epochs']} epochs, seed {args['seed']}; {which} is reported. "
                 "AutoAttack "
                 + (f"on {schema.samples(result, 'autoattack')} of {result['n_eval']} test "
                    'images' if has_aa else 'not run')
                 + f"; training eps {schema.eps_text(args['epsilon'])}.")
    return footnote, reported


def card(result: dict, ckpt, dataset_name=None) -> dict:
    """The model card of an evaluated checkpoint of ours."""
    args = ckpt.args
    method = METHODS[args['rob_fairness_algorithm']]
    loss_authors, loss_venue = LOSS_PAPERS[args['loss']]
    authors, venue = method.paper or (loss_authors, loss_venue)
    has_aa = 'autoattack' in result
    settings = result['attacks']
    pgd = [n for n in schema.evaluations(result) if n not in ('clean', 'autoattack')]
    per_class = {result['class_names'][c]: {display_name(n): result[n]['per_class'][c]
                                            for n in schema.evaluations(result)}
                 for c in range(len(result['class_names']))}
    normalize = (result.get('inputs') or {}).get('normalize')
    inputs = ('images in [0, 1], (N, 3, H, W); no normalisation outside the model'
              if not normalize else 'images in [0, 1], (N, 3, H, W), then (x - mean) / std per '
              f"channel before the model: mean {normalize['mean']}, std {normalize['std']}")
    footnote, reported = _footnote(result, ckpt)
    return {
        'name': f"{result['method']} ({result['model']}, seed {args['seed']})",
        'authors': authors,
        'venue': venue,
        'architecture': result['model'],
        'eps': schema.eps_text(result['epsilon']),
        'dataset': dataset_name or result['dataset'],
        'clean_acc': f"{result['clean']['avg']:.2f}",
        'autoattack_acc': f"{result['autoattack']['avg']:.2f}" if has_aa else None,
        'number_forward_passes': 1,
        'additional_data': False,
        'reported': f"{result['autoattack']['avg']:.2f}" if has_aa else None,
        'footnote': footnote,
        'this_code': {
            'inputs': inputs,
            'checkpoint': result['checkpoint'], 'epoch': result['epoch'],
            'reported_checkpoint': reported, 'run_dataset': result['dataset'],
            'weights': 'weight average (CFA)' if ckpt.averaged else 'the trained model',
            'n_eval': result['n_eval'], 'class_names': result['class_names'],
            'per_class': per_class,
            'summary': {display_name(n): {k: result[n][k] for k in ('avg', 'worst',
                                                                    'worst_class')}
                        for n in schema.evaluations(result)},
            'rho': (result['baseline'] or {}).get('rho'),
            'attacks': settings, 'pgd': pgd,
            'train_epsilon': args['epsilon'], 'recipe_id': result.get('recipe_id'),
            'recipe': result.get('recipe'),
            # commit, dirty and fingerprint (engine/identity.py) of what trained and evaluated
            'code': {'training': (result.get('recipe') or {}).get('code'),
                     'evaluation': result.get('code')},
        },
    }


def export(args) -> None:
    result = schema.read_result(args.result, '--result')
    ckpt = read_checkpoint(result['checkpoint'])
    if ckpt.args is None:
        raise UserError(f"--result {args.result}: its checkpoint {result['checkpoint']} is not "
                        "one of train.py's (an official file): nothing to fill the card from.")
    # The file as it is now against the one evaluated: its sha256 fixes weights, epoch,
    # selection and recipe (engine/identity.py).
    then = identity.result_identity(result)
    now = dict(then, checkpoint_sha256=identity.file_sha256(result['checkpoint']))
    changed = identity.differences(then, now)
    if changed:
        raise UserError(f"--result {args.result}: {result['checkpoint']} has changed since it "
                        f"was evaluated ({identity.describe(changed)}; now epoch {ckpt.epoch}, "
                        f"evaluated epoch {result['epoch']}); evaluate it again, then export.")
    run.make_folder(args.out, '--out')
    with run.replacing(os.path.join(args.out, 'model.pt')) as tmp:
        torch.save(ckpt.state_dict, tmp)
    run.save_json(args.out, 'model_card.json', card(result, ckpt, args.dataset_name))
    print(f"wrote {os.path.join(args.out, 'model.pt')} and "
          f"{os.path.join(args.out, 'model_card.json')}")


def main(argv=None) -> None:
    export(parse_args(argv))


if __name__ == '__main__':
    sys.exit(run_main(main))
