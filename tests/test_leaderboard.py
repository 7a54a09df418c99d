"""The leaderboard (benchmark/leaderboard.py, scripts/leaderboard.py): its page's numbers against
the result files they come from, recomputed here independently; byte-identical rebuilds; the
refusal of entries that are not one experiment."""
import copy
import glob
import json
import os
import shutil
import sys
from html.parser import HTMLParser

import numpy as np
import pytest

from engine.cli import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'scripts'))
import leaderboard as command  # noqa: E402  (scripts/leaderboard.py)

VAL_PER_CLASS = {'cpu': 24, 'cpu-lt': 100}
CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship',
           'truck']


def result(method, algorithm, seed, track, rng, **args):
    """A result as eval.py writes it, with the fields the leaderboard reads."""
    per = {name: (rng.uniform(low, low + 40, 10)).round(2).tolist()
           for name, low in (('clean', 30), ('pgd20', 5), ('autoattack', 0))}
    recipe_args = {'loss': 'trades', 'rob_fairness_algorithm': algorithm, 'seed': seed,
                   'lr': 0.1, 'epochs': 20, 'imbalance_ratio': 0.02 if track == 'cpu-lt' else None}
    recipe_args.update(args)
    return {
        'method': method, 'class_names': CLASSES, 'epoch': 17, 'n_eval': 10000, 'norm': 'Linf',
        'epsilon': 0.031, 'images_sha256': 'a' * 64, 'inputs': {'range': [0, 1]},
        'checkpoint_sha256': f'{seed:064d}', 'evaluation': {'attack': 'all'},
        'attacks': {'pgd20': {'steps': 20}}, 'code': {'fingerprint': 'c0de'},
        'selection': {'split': 'val', 'criterion': 'avg', 'attack': 'pgd20', 'epoch': 17},
        'recipe': {'args': recipe_args, 'data': {'train_sha256': 't', 'parent_sha256': None,
                                                 'validation': {'per_class': VAL_PER_CLASS[track]}},
                   'code': {'fingerprint': 'c0de'}},
        **{name: {'per_class': values, 'n': 500 if name == 'autoattack' else 10000}
           for name, values in per.items()}}


def write_entry(root, track, method, seed, res, final=None, seconds=20.0):
    folder = os.path.join(root, track, method, f'seed{seed}')
    os.makedirs(folder)
    for name, doc in (('result.json', res), ('result_final.json', final),
                      ('model_card.json', {'name': method}),
                      ('run.json', {'command': f'reproduce --methods {method} --seeds {seed}',
                                    'train_s_per_epoch': seconds, 'epochs': 20})):
        if doc is not None:
            with open(os.path.join(folder, name), 'w') as f:
                json.dump(doc, f)


@pytest.fixture
def board(tmp_path):
    rng = np.random.default_rng(0)
    root = str(tmp_path / 'leaderboard')
    for track in ('cpu', 'cpu-lt'):
        for method, label, algorithm, seconds in (('trades', 'TRADES', 'none', 20.0),
                                                  ('dafa', 'TRADES + DAFA', 'dafa', 21.0)):
            seeds = (1, 2, 3) if track == 'cpu' else (1,)
            for seed in seeds:
                res = result(label, algorithm, seed, track, rng)
                final = copy.deepcopy(res)
                final.pop('selection')
                final['epoch'] = 20
                final['pgd20']['per_class'] = [v - 1 for v in final['pgd20']['per_class']]
                write_entry(root, track, method, seed, res, final, seconds + seed)
    return root


class Cells(HTMLParser):
    """(track, method, key) -> cell text of the page's tables, and the per-class JSON block."""

    def __init__(self):
        super().__init__()
        self.cells, self.track, self.method, self.key, self.json = {}, None, None, None, None
        self._in_json = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == 'table':
            self.track = a['id'][len('table-'):]
        elif tag == 'tr':
            self.method = a.get('data-method')
        elif tag == 'td':
            self.key = a.get('data-key')
        elif tag == 'script' and a.get('id') == 'per-class':
            self._in_json = True

    def handle_endtag(self, tag):
        if tag == 'td':
            self.key = None

    def handle_data(self, data):
        if self._in_json:
            self.json, self._in_json = json.loads(data), False
        elif self.key:
            self.cells[(self.track, self.method, self.key)] = data


def expected(root, track, method, key):
    """The cell's text recomputed from the entry's files (mean and sample std over seeds)."""
    name, _, stat = key.rpartition('.')
    final = name.startswith('final.')
    evaluation = name.split('.')[-1]
    values = []
    for folder in sorted(glob.glob(os.path.join(root, track, method, 'seed*'))):
        path = os.path.join(folder, 'result_final.json' if final else 'result.json')
        found = json.load(open(path)) if os.path.isfile(path) else {}
        if evaluation not in found:  # not evaluated: the page says so
            return '-'
        acc = np.array(found[evaluation]['per_class'])
        values.append({'avg': acc.mean(), 'worst': acc.min(), 'std': acc.std(),
                       'nsd': acc.std() / acc.mean() if acc.mean() > 0 else float('nan'),
                       'gap': acc.max() - acc.min(),
                       'head': acc[:3].mean(), 'medium': acc[3:7].mean(),
                       'tail': acc[7:].mean()}[stat])
    digits = 3 if stat == 'nsd' else 2
    if len(values) == 1:
        return f'{values[0]:.{digits}f}'
    return f'{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}'


def check_page(root):
    parser = Cells()
    with open(os.path.join(root, 'index.html')) as f:
        parser.feed(f.read())
    assert parser.cells, 'the page has no numbers'
    for (track, method, key), text in parser.cells.items():
        assert text == expected(root, track, method, key), (track, method, key)
    for track, block in parser.json.items():
        for row in block['rows']:
            files = sorted(glob.glob(os.path.join(root, track, row['method'], 'seed*', 'result.json')))
            means = np.mean([json.load(open(f))['pgd20']['per_class'] for f in files], axis=0)
            assert np.allclose(row['pgd20'], means, atol=1e-4)
    return parser


def test_every_number_on_the_page_is_its_result_files(board, tmp_path):
    md = str(tmp_path / 'LEADERBOARD.md')
    command.main(['--root', board, '--markdown', md])
    parser = check_page(board)
    keys = {k for _, _, k in parser.cells}
    assert {'pgd20.head', 'pgd20.tail', 'final.pgd20.worst', 'autoattack.avg'} <= keys
    assert ('cpu', 'trades', 'pgd20.head') not in parser.cells  # groups: long-tailed only
    text = open(md).read()
    assert '| 1.05x |' in text  # DAFA's 22, 23, 24 s per epoch against TRADES' 21, 22, 23 s
    assert expected(board, 'cpu', 'dafa', 'pgd20.worst') in text
    assert '    reproduce --methods dafa --seeds 1,2,3\n' in text  # one command for three seeds
    page = open(os.path.join(board, 'index.html')).read()
    for size in VAL_PER_CLASS.values():  # each track states the size of its validation split
        note = f'checkpoints chosen on a validation split of {size} images per class'
        assert note in text and note in page


def test_a_rebuild_is_byte_identical(board, tmp_path):
    md = str(tmp_path / 'LEADERBOARD.md')
    command.main(['--root', board, '--markdown', md])
    first = open(md, 'rb').read(), open(os.path.join(board, 'index.html'), 'rb').read()
    command.main(['--root', board, '--markdown', md])
    assert (open(md, 'rb').read(), open(os.path.join(board, 'index.html'), 'rb').read()) == first


def edit_results(board, track, method, seeds, change):
    """Apply change(doc) to the result.json of these seeds of an entry."""
    for seed in seeds:
        path = os.path.join(board, track, method, f'seed{seed}', 'result.json')
        doc = json.load(open(path))
        change(doc)
        json.dump(doc, open(path, 'w'))


def assert_refused(board, tmp_path, match):
    with pytest.raises(UserError, match=match):
        command.main(['--root', board, '--markdown', str(tmp_path / 'x.md')])


def test_a_mixed_entry_is_refused_by_field(board, tmp_path):
    edit_results(board, 'cpu', 'dafa', [2], lambda doc: doc['recipe']['args'].update(lr=0.2))
    assert_refused(board, tmp_path, r'cpu/dafa: seed 2 is not the same experiment as seed 1 '
                                    r'\(result: .*args\.lr')


def test_a_run_of_another_protocol_is_refused_by_field(board, tmp_path):
    # A long-tailed run in the balanced track.
    edit_results(board, 'cpu', 'trades', [1, 2, 3],
                 lambda doc: doc['recipe']['args'].update(imbalance_ratio=0.02))
    assert_refused(board, tmp_path, r"cpu/trades/seed1: trained with --imbalance_ratio 0\.02, "
                                    r"and the cpu track's protocol uses None")


def test_a_baseline_at_unscaled_epoch_counts_is_refused(board, tmp_path):
    """The cpu track scales CFA's begin as tau (benchmark/protocols.py SHORT_CPU_EPOCHS): a
    CFA run at the official 10 is another protocol."""
    rng = np.random.default_rng(1)
    write_entry(board, 'cpu', 'cfa', 1, result('TRADES + CFA', 'cfa', 1, 'cpu', rng, cfa_begin=1))
    command.main(['--root', board, '--markdown', str(tmp_path / 'x.md')])
    write_entry(board, 'cpu', 'cfa', 2, result('TRADES + CFA', 'cfa', 2, 'cpu', rng,
                                               cfa_begin=10))
    assert_refused(board, tmp_path, r"cpu/cfa/seed2: trained with --cfa_begin 10, and the cpu "
                                    r"track's protocol uses 1")


def test_a_result_chosen_on_the_test_set_is_refused(board, tmp_path):
    edit_results(board, 'cpu-lt', 'trades', [1],
                 lambda doc: doc['selection'].update(split='test'))
    assert_refused(board, tmp_path, 'chosen on the test set')


def test_entries_evaluated_differently_are_refused(board, tmp_path):
    edit_results(board, 'cpu', 'trades', [1, 2, 3], lambda doc: doc.update(n_eval=1000))
    assert_refused(board, tmp_path, 'evaluated unlike.*n_eval 10000 -> 1000')


def write_timing(board, folder, **change):
    """A timing.json in the track folder `folder` (its fields as scripts/time_methods.py writes
    them), with change applied."""
    timing = {'track': folder, 'what': 'seconds of epoch 2', 'code': {'fingerprint': 'c0de'},
              'machine': {'device': 'Some CPU', 'cpu_capability': 'AVX2', 'threads': 2,
                          'torch': '2.14.1'},
              'rounds': [{}, {}], 's_per_epoch': {'trades': 10.0, 'dafa': 12.5}}
    timing.update(change)
    with open(os.path.join(board, folder, 'timing.json'), 'w') as f:
        json.dump(timing, f)


def test_the_time_column_reads_the_tracks_timing_where_there_is_one(board, tmp_path):
    """The runs' own seconds (DAFA 1.05x TRADES in the fixture) give way to timing.json's,
    measured back to back (12.5 / 10 s), and the track's note says how they were timed."""
    write_timing(board, 'cpu')
    md = str(tmp_path / 'LEADERBOARD.md')
    command.main(['--root', board, '--markdown', md])
    cpu, lt = open(md).read().split('## CIFAR-10-LT')
    assert '| 1.25x |' in cpu and '| 1.05x |' not in cpu
    assert 'time: seconds of epoch 2, by scripts/time_methods.py on Some CPU, AVX2, 2 threads, ' \
           'torch 2.14.1, 2 rounds, methods back to back (TRADES 10.0 s)' in cpu
    assert '| 1.05x |' in lt and "time: the runs' own seconds per epoch" in lt


def test_a_timing_of_other_code_or_another_track_is_refused(board, tmp_path):
    write_timing(board, 'cpu', code={'fingerprint': 'beef'})
    assert_refused(board, tmp_path, r'timing\.json: code beef was timed, and the entries were '
                                    r'trained by c0de')
    write_timing(board, 'cpu', track='cpu-lt')
    assert_refused(board, tmp_path, r"timing\.json: track 'cpu-lt' was timed, not 'cpu'")


@pytest.mark.skipif(not os.path.isfile(os.path.join(ROOT, 'leaderboard', 'index.html')),
                    reason='no committed leaderboard')
def test_the_committed_page_is_its_committed_results(tmp_path):
    check_page(os.path.join(ROOT, 'leaderboard'))
    # and both views are what the committed results rebuild, byte for byte
    copy_root = str(tmp_path / 'leaderboard')
    shutil.copytree(os.path.join(ROOT, 'leaderboard'), copy_root)
    command.main(['--root', copy_root, '--markdown', str(tmp_path / 'LEADERBOARD.md')])
    for mine, committed in ((os.path.join(copy_root, 'index.html'),
                             os.path.join(ROOT, 'leaderboard', 'index.html')),
                            (str(tmp_path / 'LEADERBOARD.md'), os.path.join(ROOT, 'LEADERBOARD.md'))):
        assert open(mine, 'rb').read() == open(committed, 'rb').read(), committed


def test_collect_copies_a_reproduce_folder_and_refuses_to_replace(tmp_path, capsys, in_process,
                                                                  monkeypatch):
    """reproduce.py --select best_val on tiny data, the final model evaluated by eval.py, then
    --collect: the entry holds both results, the card and the run's time; a second collect of
    another result for the same seed is refused."""
    import dataclasses

    import eval as eval_cli
    import reproduce
    from benchmark import leaderboard
    monkeypatch.setitem(leaderboard.TRACKS, 'tiny', {'title': 'tiny', 'groups': None})
    out, root = str(tmp_path / 'tiny'), str(tmp_path / 'leaderboard')
    assert reproduce.main(['--protocol', 'tiny', '--epochs', '2', '--n_eval', '20',
                           '--synthetic_n_train_per_class', '24',
                           '--synthetic_n_test_per_class', '4', '--pgd_num_steps', '2',
                           '--batch_size', '32', '--device', 'cpu', '--methods', 'trades',
                           '--seeds', '1', '--jobs', '1', '--attack', 'pgd',
                           '--select', 'best_val', '--out', out]) == 0
    run = os.path.join(out, 'runs', 'trades', 'seed1')
    assert eval_cli.cli(['--checkpoint', os.path.join(run, 'checkpoint-latest.pt'),
                         '--attack', 'pgd', '--n_eval', '20', '--device', 'cpu',
                         '--no_progress']) == 0
    # The track's protocol is what this test ran: tiny's model, on 2 epochs.
    monkeypatch.setitem(leaderboard.PROTOCOLS, 'tiny', dataclasses.replace(
        leaderboard.PROTOCOLS['tiny'], epochs=2, train_args=()))
    md = str(tmp_path / 'LEADERBOARD.md')
    with pytest.raises(UserError, match="trained with --epochs 2, and the cpu track's protocol "
                                        'uses 20'):
        command.main(['--collect', out, '--track', 'cpu', '--root', root, '--markdown', md])
    assert not os.path.exists(root)  # refused before anything was copied
    twin = os.path.join(out, 'runs', 'trades', 'seed9')  # a second folder with seed 1's result
    shutil.copytree(run, twin)
    with pytest.raises(UserError, match='both hold trades seed 1'):
        command.main(['--collect', out, '--track', 'tiny', '--root', root, '--markdown', md])
    assert not os.path.exists(root)
    shutil.rmtree(twin)
    command.main(['--collect', out, '--track', 'tiny', '--root', root, '--markdown', md])
    entry = os.path.join(root, 'tiny', 'trades', 'seed1')
    assert sorted(os.listdir(entry)) == ['model_card.json', 'result.json', 'result_final.json',
                                         'run.json']
    selected = json.load(open(os.path.join(entry, 'result.json')))
    assert selected['selection']['split'] == 'val'
    assert json.load(open(os.path.join(entry, 'result_final.json')))['epoch'] == 2
    assert json.load(open(os.path.join(entry, 'run.json')))['train_s_per_epoch'] > 0
    assert '--methods trades --seeds 1' in open(md).read()
    check_page(root)
    # A seed whose recipe differs in more than the seed joins no entry: refused with the field,
    # before anything is copied.
    other = os.path.join(out, 'runs', 'trades', 'seed2')
    shutil.copytree(run, other)
    for path in glob.glob(os.path.join(other, 'eval_*.json')):
        doc = json.load(open(path))
        doc['recipe']['args'].update(seed=2, lr=0.2)
        json.dump(doc, open(path, 'w'))
    with pytest.raises(UserError, match=f"{root}/tiny/trades: seed 2 is not the same experiment "
                                        r'as seed 1 \(result: .*args\.lr'):
        command.main(['--collect', out, '--track', 'tiny', '--root', root, '--markdown', md])
    assert sorted(os.listdir(os.path.join(root, 'tiny', 'trades'))) == ['seed1']
    # An evaluation still running (AutoAttack's log without its result) is skipped, not taken.
    stem = os.path.splitext(os.path.basename(glob.glob(os.path.join(other, 'eval_*.json'))[0]))[0]
    open(os.path.join(other, stem.replace('eval_pgd', 'eval_all') + '_autoattack.log'), 'w').close()
    command.main(['--collect', out, '--track', 'tiny', '--root', root, '--markdown', md])
    assert 'skipped ' + other + ': an evaluation has not finished' in capsys.readouterr().out
    assert sorted(os.listdir(os.path.join(root, 'tiny', 'trades'))) == ['seed1']
    selected['pgd20']['per_class'][0] += 1  # "another result": the same seed, other numbers
    selected['checkpoint_sha256'] = '0' * 64
    json.dump(selected, open(os.path.join(entry, 'result.json'), 'w'))
    with pytest.raises(UserError, match='already holds another result.*checkpoint_sha256'):
        command.main(['--collect', out, '--track', 'tiny', '--root', root, '--markdown', md])


def test_the_evaluation_note_names_the_entries_chosen_on_another_split():
    from benchmark.leaderboard import evaluation_note
    rows = [{'label': label, 'aa_images': 500, 'val_per_class': sizes, 'code': code}
            for label, sizes, code in (('TRADES', [24], ['c0de']), ('TRADES + FRL', [72], ['c0de']),
                                       ('TRADES + DAFA', [24], ['c0de', 'f00d']),
                                       ('a foreign file', [], []))]
    assert evaluation_note(rows) == (
        'AutoAttack on 500 test images; checkpoints chosen on a validation split of 24 images per '
        'class (TRADES + FRL: 72); trained by the code of fingerprint c0de (TRADES + DAFA: '
        'c0de/f00d).')
    assert evaluation_note([dict(rows[3], aa_images=None)]) == 'No AutoAttack.'


def test_time_methods_keeps_each_methods_fastest_epoch_2_over_alternating_rounds(tmp_path,
                                                                                monkeypatch):
    """scripts/time_methods.py with scripts/reproduce.py replaced by a stand-in that writes the
    run's metrics: epoch 2's steps plus the method's work, the minimum over rounds, the methods'
    order reversed every other round, and the train.py options passed through."""
    import time_methods  # scripts/time_methods.py
    seconds = {('trades', 1): 10.0, ('dafa', 1): 14.0, ('trades', 2): 11.0, ('dafa', 2): 12.0}
    calls = []

    def reproduce(command):
        argv = command[2:]
        method, folder = argv[argv.index('--methods') + 1], argv[argv.index('--out') + 1]
        calls.append((method, argv))
        run_folder = os.path.join(folder, 'runs', method, 'seed1')
        os.makedirs(run_folder)
        rows = [{'epoch': 1, 'train_time_s': 99.0, 'method_time_s': 0.0},
                {'epoch': 2, 'train_time_s': seconds[method, int(folder[-1])] - 0.5,
                 'method_time_s': 0.5}]
        with open(os.path.join(run_folder, 'metrics.jsonl'), 'w') as f:
            f.writelines(json.dumps(r) + '\n' for r in rows)
        with open(os.path.join(run_folder, 'recipe.json'), 'w') as f:
            json.dump({'machine': {'threads': 1, 'run': f'{method} {folder[-6:]}'}}, f)

    monkeypatch.setattr(time_methods, 'reproduce', reproduce)
    out = str(tmp_path / 'timing')
    time_methods.main(['--protocol', 'tiny', '--out', out, '--methods', 'trades,dafa',
                       '--cfa_begin', '1'])
    timing = json.load(open(os.path.join(out, 'timing.json')))
    assert [m for m, _ in calls] == ['trades', 'dafa', 'dafa', 'trades']
    assert [r['order'] for r in timing['rounds']] == [['trades', 'dafa'], ['dafa', 'trades']]
    assert timing['s_per_epoch'] == {'trades': 10.0, 'dafa': 12.0}
    assert timing['track'] == 'tiny' and timing['code']['fingerprint']
    # the machine as the timed runs had it (their threads), not as this process has it
    assert timing['machine'] == {'threads': 1, 'run': 'trades round1'}
    for _, argv in calls:
        assert argv[argv.index('--epochs') + 1] == '2'
        assert argv[argv.index('--dafa_warmup') + 1] == '1'
        assert argv[-2:] == ['--cfa_begin', '1']
    with pytest.raises(UserError, match='holds the rounds of an earlier timing'):
        time_methods.main(['--protocol', 'tiny', '--out', out])  # would reuse, not time
