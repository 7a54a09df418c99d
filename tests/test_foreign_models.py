"""Evaluating a model this code did not train, as a new user would: a test-only image folder,
torchvision-style names, a normalising model, a quick AutoAttack subset that says it is not the
standard one, and a result that records what was evaluated (file, images, inputs, exact eps,
every class tied at the worst value)."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import eval as eval_cli
import models
from engine.cli import UserError
from engine.identity import file_sha256
from evaluation import schema, tables
from evaluation.checkpoint_io import build_model
from evaluation.metrics import summarize

CLASSES = ('ant', 'bee', 'cat', 'dog')


def write_test_folder(root, per_class=3, size=8):
    """DIR/test/<class>/*.png only (no DIR/train), random images."""
    rng = np.random.default_rng(0)
    for cls in CLASSES:
        (root / 'test' / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), np.uint8)).save(
                root / 'test' / cls / f'{i}.png')
    return root


@pytest.fixture
def foreign(tmp_path):
    """A bare small-cnn state_dict (the official format) and a test-only class folder."""
    torch.manual_seed(0)
    path = tmp_path / 'model.pt'
    torch.save(models.create('small-cnn', len(CLASSES), 8).state_dict(), path)
    return str(path), write_test_folder(tmp_path / 'data')


def evaluate(path, folder, out, *extra):
    eval_cli.main(['--checkpoint', path, '--model', 'small-cnn', '--dataset', 'folder',
                   '--data_dir', str(folder), '--device', 'cpu', '--no_progress', '--out',
                   str(out), *extra])
    results = [f for f in sorted(os.listdir(out)) if f.endswith('.json')]
    with open(os.path.join(out, results[-1])) as f:
        return results[-1], json.load(f)


def test_a_test_only_folder_is_enough_and_the_result_records_what_was_evaluated(
        foreign, tmp_path):
    path, folder = foreign
    assert not (folder / 'train').exists()
    _, result = evaluate(path, folder, tmp_path / 'a', '--attack', 'pgd', '--pgd_num_steps', '2')
    assert result['checkpoint_sha256'] == file_sha256(path)
    assert result['data_dir'] == str(folder)
    assert result['inputs'] == {'range': [0, 1], 'normalize': None}
    assert result['epsilon_text'] == '0.031 (not 8/255 = 0.031373)'
    # The images' fingerprint follows what was evaluated: a subset has its own.
    _, subset = evaluate(path, folder, tmp_path / 'b', '--attack', 'none', '--n_eval', '4',
                         '--epsilon', str(8 / 255))
    assert subset['images_sha256'] != result['images_sha256']
    assert subset['epsilon_text'] == '8/255'
    # Only the test split was decoded, into a cache of its own.
    assert (folder / '.uint8-cache-test.pt').is_file()
    assert not (folder / '.uint8-cache.pt').exists()


def test_normalize_is_applied_inside_the_attacked_model(foreign, tmp_path):
    path, folder = foreign
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    _, result = evaluate(path, folder, tmp_path / 'a', '--attack', 'none', '--normalize',
                         ','.join(map(str, mean + std)))
    assert result['inputs']['normalize'] == {'mean': mean, 'std': std}
    # The clean predictions are the bare model's on (x - mean) / std.
    bare = models.create('small-cnn', len(CLASSES), 8)
    bare.load_state_dict(torch.load(path, weights_only=True))
    x = torch.stack([torch.from_numpy(np.array(Image.open(folder / 'test' / c / f'{i}.png')))
                     .permute(2, 0, 1) for c in CLASSES for i in range(3)]).float() / 255
    with torch.no_grad():
        pred = bare.eval()((x - torch.tensor(mean).view(1, 3, 1, 1))
                           / torch.tensor(std).view(1, 3, 1, 1)).argmax(1)
    y = torch.arange(len(CLASSES)).repeat_interleave(3)
    assert result['clean']['avg'] == pytest.approx(
        100 * float((pred == y).float().view(len(CLASSES), 3).mean(1).mean()))


def test_torchvision_names_are_mapped_and_an_imagenet_resnet_is_named(tmp_path):
    torch.manual_seed(0)
    ours = models.create('resnet', 10, 32).eval()
    renamed = {k.replace('linear.', 'fc.').replace('.shortcut.', '.downsample.'): v
               for k, v in ours.state_dict().items()}
    notes = []
    model = build_model('resnet', 10, 32, renamed, 'cpu', note=notes.append)
    assert notes and 'torchvision' in notes[0]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), ours(x))
    renamed['conv1.weight'] = torch.zeros(64, 3, 7, 7)  # an ImageNet stem
    with pytest.raises(UserError, match='torchvision-style .* ImageNet ResNet'):
        build_model('resnet', 10, 32, renamed, 'cpu')


def test_an_autoattack_subset_is_labelled_and_never_compared_with_the_standard(
        foreign, tmp_path, capsys):
    path, folder = foreign
    name, result = evaluate(path, folder, tmp_path, '--attack', 'aa', '--aa_attacks', 'apgd-ce')
    assert name.endswith('_standard-apgd-ce.json')  # never the standard result's file
    settings = result['attacks']['autoattack']
    assert settings['attacks'] == ['apgd-ce'] and settings['standard'] is False
    assert 'NOT the standard AutoAttack' in capsys.readouterr().out
    standard = dict(result, attacks=dict(result['attacks'], autoattack=dict(
        settings, variant=None, standard=True, attacks=['apgd-ce', 'apgd-t', 'fab-t',
                                                        'square'])))
    shutil.copy(tmp_path / name, tmp_path / 'subset.json')
    with open(tmp_path / 'standard.json', 'w') as f:
        json.dump(standard, f)
    with pytest.raises(UserError, match='aa_variant'):
        tables.compare_tables([(str(tmp_path / 'standard.json'), standard),
                               (str(tmp_path / 'subset.json'), result)])
    with pytest.raises(SystemExit):
        eval_cli.parse_args(['--checkpoint', path, '--attack', 'aa', '--aa_attacks', 'fab'])


def test_every_class_tied_at_the_worst_value_is_named():
    correct = torch.tensor([1, 0, 0, 1, 0, 1, 1, 1], dtype=torch.bool)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    summary = summarize(correct, labels, list(CLASSES))
    assert summary['worst'] == 50.0 and summary['worst_class'] == 'ant'
    assert summary['worst_classes'] == ['ant', 'bee', 'cat']
    assert schema.eps_text(16 / 255) == '16/255' and schema.eps_text(0.5) == '0.5'
