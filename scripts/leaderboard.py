"""Rebuild the robust-fairness leaderboard (LEADERBOARD.md and leaderboard/index.html) from the
results committed under leaderboard/, or collect a scripts/reproduce.py output into it.

    python scripts/leaderboard.py                                    # rebuild both views
    python scripts/leaderboard.py --collect runs/cpu --track cpu     # then rebuild

--collect copies, per run of the reproduce folder, the result of its checkpoint chosen on
validation (result.json), its final model's result if evaluated (result_final.json), the model
card (scripts/export.py's, without the weights) and run.json (the command, seconds per epoch)
into leaderboard/<track>/<method>/seed<N>/. A seed already there with another identity is
refused, by field: nothing replaces a result. The layout and the checks: benchmark/leaderboard.py.
"""
import glob
import os
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmark import leaderboard, leaderboard_views  # noqa: E402
from benchmark.tables import train_seconds  # noqa: E402
from engine import identity, run  # noqa: E402
from engine.cli import ArgumentParser, UserError, run_main  # noqa: E402
from evaluation.checkpoint_io import read_checkpoint  # noqa: E402
from evaluation.schema import evaluations, seed_of  # noqa: E402
from export import card  # noqa: E402  (scripts/export.py, beside this file)

REPRODUCE = ("python scripts/reproduce.py --protocol {track} --dataset folder --data_dir DIR "
             "--data_label 'CIFAR-10 (JPEG copy)' --methods {method} --seeds {seeds} "
             "--select best_val --device {device} --out runs/{track}")


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--root', default=os.path.join(ROOT, 'leaderboard'),
                   help='the committed results (default: leaderboard/)')
    p.add_argument('--markdown', default=os.path.join(ROOT, 'LEADERBOARD.md'))
    p.add_argument('--collect', metavar='OUT', help="a scripts/reproduce.py --out folder "
                   "(its runs/<method>/seed<N>/) to copy into --root first")
    p.add_argument('--track', choices=tuple(leaderboard.TRACKS),
                   help='the protocol the --collect folder was made with')
    args = p.parse_args(argv)
    if args.collect and not args.track:
        p.error('--collect needs --track (the --protocol it was made with).')
    return args


def _results(folder: str):
    """(selected on validation, final model) results of a run folder, None where absent; of
    several, the one with the most evaluations (eval.py --attack all writes PGD's alone first)."""
    selected = final = None
    for path in sorted(glob.glob(os.path.join(folder, 'eval_*.json'))):
        result = leaderboard.read_json(path)
        if (result.get('selection') or {}).get('split') == 'val':
            selected = _fuller(selected, result)
        elif not result.get('selection') and result.get('epoch') == result['recipe']['args']['epochs']:
            final = _fuller(final, result)
    return selected, final


def _fuller(old, new):
    return new if old is None or len(evaluations(new)) > len(evaluations(old)) else old


def collect(out: str, track: str, root: str) -> None:
    """Every run of the folder is checked, alone and with the entries it joins, before any is
    copied, so a refusal leaves --root as it was."""
    found = []
    for folder in sorted(glob.glob(os.path.join(out, 'runs', '*', 'seed*'))):
        selected, final = _results(folder)
        if selected is None:
            print(f'skipped {folder}: no result of a checkpoint chosen on validation yet')
            continue
        if _unfinished(folder):
            print(f'skipped {folder}: an evaluation has not finished ({_unfinished(folder)[0]} '
                  'without its result); collect it once it has')
            continue
        method = os.path.basename(os.path.dirname(folder))
        dest = os.path.join(track, method, f'seed{seed_of(selected)}')  # under --root
        leaderboard.check_track(selected, track, folder)
        _check_not_replacing(os.path.join(root, dest), selected)
        if identity.file_sha256(selected['checkpoint']) != selected['checkpoint_sha256']:
            raise UserError(f"{selected['checkpoint']} changed since it was evaluated; "
                            'evaluate it again, then collect.')
        twin = next((f for f, _, d, _, _ in found if d == dest), None)
        if twin:
            raise UserError(f'{twin} and {folder} both hold {method} seed {seed_of(selected)}; '
                            'collect one of them.')
        found.append((folder, method, dest, selected, final))
    with tempfile.TemporaryDirectory() as staging:  # the track as it would be, checked first
        if os.path.isdir(os.path.join(root, track)):
            shutil.copytree(os.path.join(root, track), os.path.join(staging, track))
        for folder, method, dest, selected, final in found:
            _write_seed(os.path.join(staging, dest), folder, track, method, selected, final)
        try:
            leaderboard.load(staging)
        except UserError as err:
            raise UserError(str(err).replace(staging, root)) from err
        for folder, _, dest, _, _ in found:
            run.make_folder(os.path.join(root, dest), '--root')
            for name in os.listdir(os.path.join(staging, dest)):
                # Atomically: a kill mid-copy never leaves a half-written result in --root.
                run.write_atomic(os.path.join(root, dest, name),
                                 open(os.path.join(staging, dest, name)).read())
            print(f'collected {folder} -> {os.path.join(root, dest)}')


def _write_seed(dest: str, folder: str, track: str, method: str, selected: dict, final) -> None:
    """One seed's files: its results, the model card (without weights) and run.json."""
    os.makedirs(dest, exist_ok=True)
    run.save_json(dest, 'result.json', selected)
    if final is not None:
        run.save_json(dest, 'result_final.json', final)
    run.save_json(dest, 'model_card.json',
                  card(selected, read_checkpoint(selected['checkpoint']), 'cifar10'))
    rows = run.metrics_rows(folder)
    run.save_json(dest, 'run.json', {
        'command': REPRODUCE.format(track=track, method=method, seeds=seed_of(selected),
                                    device=selected['device'].split()[0]),
        'train_s_per_epoch': train_seconds(folder) / len(rows), 'epochs': len(rows)})


def _unfinished(folder: str) -> list:
    """The AutoAttack logs of evaluations still running (or stopped) in a run folder: eval.py
    --attack all writes PGD's result first, then AutoAttack's log, then the full result."""
    return [os.path.basename(log) for log in sorted(glob.glob(
        os.path.join(folder, 'eval_*_autoattack.log')))
        if not os.path.isfile(log[:-len('_autoattack.log')] + '.json')]


def _check_not_replacing(dest: str, result: dict) -> None:
    path = os.path.join(dest, 'result.json')
    if not os.path.isfile(path):
        return
    diff = identity.differences(identity.result_identity(leaderboard.read_json(path)),
                                identity.result_identity(result))
    if diff:
        raise UserError(f'{dest} already holds another result ({identity.describe(diff)}); '
                        'move it away first if this one should replace it.')


def build(root: str, markdown_path: str) -> None:
    tracks = {track: leaderboard.table(entries, track,
                                       leaderboard.read_timing(root, track, entries))
              for track, entries in leaderboard.load(root).items()}
    for folder in (root, os.path.dirname(os.path.abspath(markdown_path))):
        run.make_folder(folder, '--root' if folder == root else '--markdown')
    with open(markdown_path, 'w') as f:
        f.write(leaderboard_views.markdown(tracks, root, os.path.dirname(markdown_path)))
    with open(os.path.join(root, 'index.html'), 'w') as f:
        f.write(leaderboard_views.page(tracks, root))
    print(f"wrote {markdown_path} and {os.path.join(root, 'index.html')} "
          f"({sum(len(r) for r in tracks.values())} entries)")


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.collect:
        collect(args.collect, args.track, args.root)
    build(args.root, args.markdown)


if __name__ == '__main__':
    sys.exit(run_main(main))
