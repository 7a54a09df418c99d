"""scripts/reproduce.py on tiny synthetic data: the table, idempotent reruns, resuming, failures."""
import json
import os
import shutil
import socket
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'scripts'))

import reproduce  # noqa: E402
from benchmark.plan import Plan  # noqa: E402
from engine.arguments import parse_args as train_arguments  # noqa: E402
from benchmark import tables as benchmark_tables  # noqa: E402
import benchmark.plan  # noqa: E402
import benchmark.reproduce  # noqa: E402

# The tiny protocol, smaller still: 2 epochs (tau 1) on 24 images per class, 2 test images per
# class evaluated, 2-step training attack.
SMALL = ['--protocol', 'tiny', '--epochs', '2', '--dafa_warmup', '1', '--n_eval', '20',
         '--synthetic_n_train_per_class', '24', '--synthetic_n_test_per_class', '4',
         '--pgd_num_steps', '2', '--batch_size', '32', '--device', 'cpu']


def test_reproduce_writes_the_table_reruns_as_a_no_op_and_resumes(tmp_path, capsys, in_process):
    out = str(tmp_path / 'tiny')
    # AutoAttack on 10 of the 20 images (one per class): its plumbing, at half the cost.
    argv = SMALL + ['--methods', 'dafa', '--seeds', '1,2', '--jobs', '2', '--out', out,
                    '--n_autoattack', '10']
    assert reproduce.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count('start train') == 4 and printed.count('start eval') == 4
    table = open(os.path.join(out, 'table.md')).read()
    assert '| TRADES (2 seeds) |' in table and '| TRADES + DAFA (2 seeds) |' in table
    assert '| TRADES + DAFA (paper) | 81.63 ± 0.20 | 67.90 ± 1.25 | 0.03 | 49.05 ± 0.14 | ' \
           '30.53 ± 1.04 | 0.42 |' in table
    assert ' ± ' in table.split('| TRADES (2 seeds) |')[1].splitlines()[0]
    results = json.load(open(os.path.join(out, 'results.json')))
    assert sorted((r['method'], r['seed']) for r in results['runs']) == [
        ('dafa', 1), ('dafa', 2), ('trades', 1), ('trades', 2)]
    assert results['failures'] == [] and results['device'] == 'cpu'
    dafa_run = next(r for r in results['runs'] if r['method'] == 'dafa')
    assert dafa_run['result']['n_eval'] == 20 and 'autoattack' in dafa_run['result']
    assert dafa_run['result']['autoattack']['n'] == 10
    assert dafa_run['warmup_time_s_shared'] > 0  # branched off the TRADES run's epoch 1
    assert os.path.isfile(os.path.join(out, 'per_class.png'))

    # A rerun starts nothing.
    assert reproduce.main(argv) == 0
    assert 'start ' not in capsys.readouterr().out

    # What a kill during epoch 2 of TRADES seed 2 leaves (the latest checkpoint is the commit
    # point): a rerun resumes it from epoch 1 and evaluates it again, to the same numbers.
    run = os.path.join(out, 'runs', 'trades', 'seed2')
    before = json.load(open(os.path.join(run, 'eval_all_epoch2_n20_aa10.json')))
    shutil.copy(os.path.join(run, 'checkpoint-epoch1.pt'),
                os.path.join(run, 'checkpoint-latest.pt'))
    for name in ('checkpoint-epoch2.pt', 'eval_all_epoch2_n20_aa10.json'):
        os.remove(os.path.join(run, name))
    assert reproduce.main(argv) == 0
    printed = capsys.readouterr().out
    assert 'start train trades seed 2' in printed and '--resume' in printed
    assert printed.count('start ') == 2  # that run and its evaluation only
    after = json.load(open(os.path.join(run, 'eval_all_epoch2_n20_aa10.json')))
    for name in ('clean', 'pgd20', 'autoattack'):
        assert after[name]['per_class'] == before[name]['per_class']

    # A rerun under another recipe reuses nothing: refused, naming what differs.
    for change, named in ((['--dafa_lambda', '1.0'], '--dafa_lambda 0.5 -> 1.0'),
                          (['--epochs', '3'], '--epochs 2 -> 3'),
                          (['--synthetic_noise', '0.3'], '--synthetic_noise 0.2 -> 0.3')):
        try:
            code = reproduce.main(argv + change)
        except SystemExit as err:
            code = err.code
        err = capsys.readouterr().err
        assert code == 2 and err.count('\n') == 1, err
        assert 'hold runs of another experiment' in err and named in err
    # A result torn by a full disk is evaluated again, not taken as finished.
    result = os.path.join(out, 'runs', 'dafa', 'seed1', 'eval_all_epoch2_n20_aa10.json')
    with open(result, 'w') as f:
        f.write('{"epoch": 2, "clean": {')
    assert reproduce.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count('start ') == 1 and 'start eval dafa seed 1' in printed
    assert json.load(open(result))['epoch'] == 2
    # A result edited into another shape, its identity intact, is evaluated again, not tabled.
    edited = json.load(open(result))
    edited['clean']['per_class'] = 'x'
    with open(result, 'w') as f:
        json.dump(edited, f)
    assert reproduce.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count('start ') == 1 and 'start eval dafa seed 1' in printed
    assert isinstance(json.load(open(result))['clean']['per_class'], list)
    # Another reproduce.py on the same --out is refused while one holds it.
    with open(os.path.join(out, '.lock'), 'w') as f:
        f.write(f'{os.getppid()} {socket.gethostname()}\n')
    assert reproduce.main(argv) == 2
    assert 'in use by process' in capsys.readouterr().err


def test_reproduce_reports_a_failed_run_and_blocks_what_depends_on_it(tmp_path, capsys,
                                                                    in_process, monkeypatch):
    out = str(tmp_path / 'fail')
    # lambda 1000 drives a class weight below 0: every DAFA run stops after branching.
    argv = SMALL + ['--methods', 'dafa', '--seeds', '1', '--out', out, '--dafa_lambda', '1000']
    code = reproduce.main(argv)
    captured = capsys.readouterr()
    assert code == 1 and 'rerun the same command' in captured.err
    assert 'FAILED train dafa seed 1' in captured.out
    table = open(os.path.join(out, 'table.md')).read()
    assert '- train dafa seed 1: failed' in table and '- eval dafa seed 1: blocked' in table
    assert '| TRADES |' in table  # what finished is still tabulated

    # The code changes after TRADES' evaluation finished (files edited while a command runs):
    # its result no longer counts, and the table says so instead of dropping the row unsaid.
    monkeypatch.setattr(benchmark.plan.identity, 'code_fingerprint', lambda: 'f' * 16)
    plan = Plan(reproduce.parse_args(argv))
    next(t for t in plan.tasks if t.name == 'eval trades seed 1').status = 'done'
    summary = benchmark_tables.tabulate(plan)
    assert summary['runs'] == []
    assert [f['task'] for f in summary['failures'] if f['status'] == 'not tabled'] == [
        'eval trades seed 1']
    assert '- eval trades seed 1: not tabled' in open(os.path.join(out, 'table.md')).read()


@pytest.mark.parametrize('argv,match', [
    (['--methods', 'awp'], 'unknown'),
    (['--seeds', 'a,b'], 'comma-separated integers'),
    (['--epochs', '5', '--dafa_warmup', '5', '--methods', 'dafa'],
     '--dafa_warmup 5 must be between 1 and --epochs 5 - 1'),
    (['--protocol', 'cpu'], '--protocol cpu reads the images from a class folder: pass '
                            '--data_dir DIR'),
])
def test_reproduce_bad_arguments(tmp_path, capsys, argv, match):
    with pytest.raises(SystemExit):
        reproduce.main(['--out', str(tmp_path), '--device', 'cpu'] + argv)
    assert match in capsys.readouterr().err


def test_cpu_protocol_evaluates_autoattack_on_its_subset_and_pgd_on_every_image(tmp_path):
    args = reproduce.parse_args(['--protocol', 'cpu', '--out', str(tmp_path), '--device', 'cpu',
                                 '--seeds', '1', '--data_dir', str(tmp_path / 'c10')])
    plan = Plan(args)
    train_task, eval_task = plan.tasks[:2]
    train_cmd, eval_cmd = plan.command(train_task), plan.command(eval_task)
    assert train_cmd[train_cmd.index('--dataset') + 1] == 'folder'
    assert train_cmd[train_cmd.index('--n_train') + 1] == '12000'
    assert '--n_eval' not in eval_cmd and eval_cmd[eval_cmd.index('--n_autoattack') + 1] == '500'
    settings = plan.eval_settings(eval_task)
    assert settings['n_eval'] is None and settings['n_autoattack'] == 500


@pytest.mark.parametrize('protocol, scaled', [
    ('cpu', {'cfa': ['--cfa_begin', '1'], 'frl': ['--frl_halving_epochs', '4']}),
    ('cpu-lt', {'cfa': ['--cfa_begin', '1'], 'frl': ['--frl_halving_epochs', '4']}),
    ('paper', {}),
])
def test_shared_recipe_scales_the_baselines_epoch_counts_as_tau(tmp_path, protocol, scaled):
    """On the 20-epoch CPU tracks (tau 7: the paper's 70 of 110, x0.1 with the lr schedule),
    CFA's begin (officially 10) and FRL's halving period (40) are scaled alike; at their official
    counts CFA would be plain TRADES for half the run and FRL would never halve. Other methods and
    the paper-scale protocol run as before."""
    args = reproduce.parse_args(['--protocol', protocol, '--methods', 'dafa,frl,cfa,wat',
                                 '--seeds', '1', '--out', str(tmp_path), '--device', 'cpu',
                                 '--data_dir', str(tmp_path / 'c10')])
    plan = Plan(args)
    for task in plan.tasks:
        if task.kind != 'train':
            continue
        parsed = train_arguments(plan.train_command(task))
        assert parsed.dafa_warmup == {'paper': 70}.get(protocol, 7)
        official = {'cfa': ('cfa_begin', 10), 'frl': ('frl_halving_epochs', 40)}
        if task.method in official:
            name, default = official[task.method]
            want = int(scaled[task.method][1]) if task.method in scaled else default
            assert getattr(parsed, name) == want, (protocol, task.method)
    line = benchmark_tables.recipe_lines(args)[0]
    assert ('--cfa_begin 1' in line) == bool(scaled)


def test_official_recipe_runs_each_baseline_on_its_own_recipe(tmp_path):
    """--recipe official: each baseline's published recipe (fairness.Method.official_args),
    epochs scaled by the protocol's 20 / 110; FRL fine-tunes the same seed's TRADES run once it
    has finished; DAFA still branches off it; the table says which arguments each method ran."""
    args = reproduce.parse_args(['--protocol', 'tiny', '--methods', 'dafa,frl,cfa,bat,wat',
                                 '--seeds', '1', '--out', str(tmp_path), '--device', 'cpu',
                                 '--recipe', 'official'])
    assert args.methods == ['trades', 'dafa', 'wat', 'frl', 'cfa', 'bat']
    plan = Plan(args)
    trains = {t.method: t for t in plan.tasks if t.kind == 'train'}
    # 100 (WAT, BAT), 40 (FRL) and 200 (CFA) official epochs, at 20 / 110.
    assert {m: t.epochs for m, t in trains.items()} == {
        'trades': 20, 'dafa': 20, 'wat': 18, 'frl': 7, 'cfa': 36, 'bat': 18}
    frl = plan.command(trains['frl'])
    assert frl[frl.index('--init_weights') + 1] == os.path.join(
        trains['trades'].folder, 'checkpoint-latest.pt') and '--resume' not in frl
    assert frl[frl.index('--beta') + 1] == '1.5' and frl[frl.index('--lr') + 1] == '0.001'
    assert not plan.ready(trains['frl'])  # the TRADES run has not finished
    cfa = plan.command(trains['cfa'])
    assert cfa[cfa.index('--cfa_loss_scale') + 1] == 'official'
    assert float(cfa[cfa.index('--epsilon') + 1]) == 8 / 255
    assert trains['dafa'].depends == [trains['trades']] and not trains['dafa'].fine_tunes
    eval_frl = next(t for t in plan.tasks if t.kind == 'eval' and t.method == 'frl')
    assert plan.eval_settings(eval_frl)['n_eval'] == 300
    assert plan.command(eval_frl)[2] == os.path.join(trains['frl'].folder,
                                                     'checkpoint-latest.pt')
    lines = '\n'.join(benchmark_tables.recipe_lines(args))
    assert 'Recipe `official`' in lines and '- trades: (the shared recipe)' in lines
    assert '- frl: --epochs 7 --lr 0.001' in lines and 'from the final model of trades' in lines
    shared = reproduce.parse_args(['--protocol', 'tiny', '--methods', 'frl', '--seeds', '1',
                                   '--out', str(tmp_path), '--device', 'cpu'])
    assert shared.methods == ['frl']
    assert 'Recipe `shared`' in benchmark_tables.recipe_lines(shared)[0]


@pytest.mark.parametrize('protocol, epochs, halving', [('paper', 40, 40), ('short', 15, 15)])
def test_official_recipe_on_the_resnet_protocols_gives_frl_and_cfa_their_networks(
        tmp_path, protocol, epochs, halving):
    """Under the ResNet protocols FRL's official network is its PreAct ResNet-18 without a
    final BatchNorm (hannxu123/fair_robust frlrmrw.py l. 17-18, pre_resnet.py l. 64-69, 84-85),
    so the TRADES run it fine-tunes is trained on that network, once per seed and not
    evaluated, while the table's TRADES row stays the protocol's ResNet-18. CFA's runs normalise
    their inputs with CIFAR-10's statistics (PKU-ML/CFA utils.py l. 11-12, 22-23) and pad their
    crops by reflection (generate_validation.py l. 20), on CFA's PreAct ResNet-18 (model.py)."""
    args = reproduce.parse_args(['--protocol', protocol, '--methods', 'frl,cfa', '--seeds',
                                 '1,2', '--out', str(tmp_path), '--device', 'cpu',
                                 '--recipe', 'official'])
    plan = Plan(args)
    trains = [t for t in plan.tasks if t.kind == 'train']
    evaluated = {t.folder for t in plan.tasks if t.kind == 'eval'}
    for seed in (1, 2):
        mine = {(t.method, t.network): t for t in trains if t.seed == seed}
        assert set(mine) == {('trades', ()), ('trades', ('--model', 'pre-resnet-frl')),
                             ('frl', ()), ('cfa', ())}
        parsed = {key: train_arguments(plan.train_command(t)) for key, t in mine.items()}
        trades, on_frl_net = mine['trades', ()], mine['trades', ('--model', 'pre-resnet-frl')]
        assert parsed['trades', ()].model == 'resnet' and trades.folder in evaluated
        assert parsed['trades', ('--model', 'pre-resnet-frl')].model == 'pre-resnet-frl'
        assert on_frl_net.folder not in evaluated and on_frl_net.folder != trades.folder
        assert plan.recipe_args(on_frl_net) == dict(plan.recipe_args(trades),
                                                    model='pre-resnet-frl')
        frl = mine['frl', ()]
        assert frl.depends == [on_frl_net] and frl.fine_tunes
        command = plan.command(frl)
        assert command[command.index('--init_weights') + 1] == os.path.join(
            on_frl_net.folder, 'checkpoint-latest.pt')
        frl_args = parsed['frl', ()]
        assert (frl_args.model, frl_args.epochs, frl_args.frl_halving_epochs,
                frl_args.frl_forwards) == ('pre-resnet-frl', epochs, halving, 'official')
        cfa_args = parsed['cfa', ()]
        assert cfa_args.model == 'pre-resnet' and cfa_args.padding_mode == 'reflect'
        assert cfa_args.normalize == [[0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616]]
        assert parsed['trades', ()].normalize is None
        assert parsed['trades', ()].padding_mode == 'constant'
    lines = '\n'.join(benchmark_tables.recipe_lines(args))
    assert 'from the final model of trades trained with --model pre-resnet-frl' in lines


def test_a_cut_still_writes_the_table_of_what_finished(tmp_path, monkeypatch, capsys):
    """A stage cut at its deadline (SIGINT / SIGTERM while runs train) writes table.md and
    results.json, the unfinished tasks marked, and exits 130."""
    def cut(plan, jobs, on_cpu):
        raise KeyboardInterrupt
    monkeypatch.setattr(benchmark.reproduce, 'run_plan', cut)
    out = tmp_path / 'out'
    assert reproduce.main(['--protocol', 'tiny', '--methods', 'trades', '--seeds', '1',
                           '--out', str(out), '--device', 'cpu']) == 130
    table = (out / 'table.md').read_text()
    assert '- train trades seed 1: interrupted' in table
    summary = json.loads((out / 'results.json').read_text())
    assert [f['status'] for f in summary['failures']] == ['interrupted'] * 2
    assert 'interrupted' in capsys.readouterr().err
