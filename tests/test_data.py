"""Tests for the data package (CPU, no network, a few seconds)."""
import argparse
import os
import warnings
import re
import urllib.error
import urllib.request
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import data
from data import datasets as datasets_module
from data import folder as folder_module
from data.synthetic import make_synthetic, parse_close_groups, template_distances
from engine.cli import UserError


def unique_images(n, size=8):
    """uint8 (n, 3, size, size) whose first pixel encodes the index, so samples are traceable."""
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(0))
    x[:, 0, 0, 0] = torch.arange(n) % 256
    x[:, 1, 0, 0] = torch.arange(n) // 256
    return x


# ----- crop_flip ------------------------------------------------------------------------------

def test_crop_flip_matches_per_sample_slicing():
    gen = torch.Generator().manual_seed(0)
    b, size, pad = 64, 8, 4
    x = torch.randint(0, 256, (b, 3, size + 2 * pad, size + 2 * pad), dtype=torch.uint8,
                      generator=gen)
    oy, ox = torch.randint(0, 2 * pad + 1, (2, b), generator=gen)
    flip = torch.rand(b, generator=gen) < 0.5
    out = data.crop_flip(x, oy, ox, flip, size)
    assert out.shape == (b, 3, size, size) and out.dtype == torch.uint8
    for i in range(b):
        window = x[i, :, oy[i]:oy[i] + size, ox[i]:ox[i] + size]
        assert torch.equal(out[i], window.flip(-1) if flip[i] else window)
    assert flip.any() and (~flip).any()  # both branches exercised


def test_crop_flip_keeps_float_dtype():
    x = torch.rand(2, 3, 6, 6)
    out = data.crop_flip(x, torch.tensor([0, 2]), torch.tensor([1, 0]),
                         torch.tensor([False, True]), 4)
    assert out.dtype == torch.float32
    assert torch.equal(out[0], x[0, :, 0:4, 1:5])
    assert torch.equal(out[1], x[1, :, 2:6, 0:4].flip(-1))


# ----- Loader ---------------------------------------------------------------------------------

# The GPU path is the same code on another device; CI has none, scripts/gpu_check.sh runs these.
DEVICES = ['cpu', pytest.param('cuda', marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason='needs a CUDA device'))]


@pytest.mark.parametrize('device', DEVICES)
def test_loader_train_epoch_covers_every_sample_once(device):
    n, bs = 300, 64
    x, y = unique_images(n), torch.arange(n)
    # pad=0 leaves the first pixel in place unless flipped, so labels can be checked both ways.
    loader = data.Loader(x, y, bs, device=device, train=True, seed=3, pad=0)
    batches = [(xb.cpu(), yb.cpu()) for xb, yb in loader]
    assert len(loader) == len(batches) == 5
    assert [len(b[1]) for b in batches] == [64, 64, 64, 64, 44]  # partial batch kept
    labels = torch.cat([b[1] for b in batches])
    assert torch.equal(labels.sort().values, torch.arange(n))
    assert not torch.equal(labels, torch.arange(n))  # shuffled
    for xb, yb in batches:
        assert xb.dtype == torch.float32 and yb.dtype == torch.int64
        assert xb.shape[1:] == (3, 8, 8)
        assert 0 <= xb.min() and xb.max() <= 1
        # Each image is its own sample, flipped or not.
        src = x[yb].float() / 255
        assert all(torch.equal(a, b) or torch.equal(a, b.flip(-1)) for a, b in zip(xb, src))


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('mode', ['constant', 'reflect'])
def test_loader_train_crops_are_windows_of_padded_images(device, mode):
    """Each training image is a crop (and maybe a flip) of its image padded as torchvision's
    RandomCrop(H, padding=4, padding_mode=mode): zeros (the DAFA and TRADES codes), or
    reflection as CFA's (PKU-ML/CFA generate_validation.py l. 20, utils.py l. 32)."""
    import torchvision.transforms.functional as TF
    n, pad = 50, 4
    x, y = unique_images(n), torch.arange(n)
    loader = data.Loader(x, y, 16, device=device, train=True, seed=0, pad=pad,
                         padding_mode=mode)
    padded = TF.pad(x, pad, padding_mode=mode).float() / 255
    offsets = set()
    for xb, yb in ((xb.cpu(), yb.cpu()) for xb, yb in loader):
        for img, label in zip(xb, yb):
            matches = [(oy, ox, f) for oy in range(2 * pad + 1) for ox in range(2 * pad + 1)
                       for f in (False, True)
                       if torch.equal(img, (lambda w: w.flip(-1) if f else w)(
                           padded[label, :, oy:oy + 8, ox:ox + 8]))]
            assert matches, f"sample {label} is not a crop of its padded image"
            offsets.add(matches[0][:2])
    assert len(offsets) > 10  # offsets really vary


def test_loader_epoch_determinism_and_variation():
    x, y = unique_images(200), torch.arange(200)

    def epoch(e, seed=0):
        loader = data.Loader(x, y, 32, device='cpu', train=True, seed=seed)
        loader.set_epoch(e)
        return torch.cat([xb for xb, _ in loader]), torch.cat([yb for _, yb in loader])

    x1, y1 = epoch(5)
    x2, y2 = epoch(5)  # a fresh loader, as after a resume
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    x3, y3 = epoch(6)
    assert not torch.equal(y1, y3) and not torch.equal(x1, x3)
    assert not torch.equal(epoch(5, seed=1)[1], y1)


def test_loader_eval_is_exact_and_in_order():
    x, y = unique_images(70), torch.arange(70)
    loader = data.Loader(x, y, 32, device='cpu', train=False)
    batches = list(loader)
    assert [len(b[1]) for b in batches] == [32, 32, 6]
    assert torch.equal(torch.cat([b[0] for b in batches]), x.float() / 255)
    assert torch.equal(torch.cat([b[1] for b in batches]), y)


def test_loader_drop_last():
    x, y = unique_images(70), torch.arange(70)
    loader = data.Loader(x, y, 32, device='cpu', train=True, drop_last=True)
    assert len(loader) == 2 and [len(b[1]) for b in loader] == [32, 32]


def test_loader_rejects_float_images():
    with pytest.raises(ValueError, match='uint8'):
        data.Loader(torch.rand(4, 3, 8, 8), torch.arange(4), 2, device='cpu', train=True)


# ----- stratified_subset ----------------------------------------------------------------------

def test_stratified_subset_counts_and_first_samples():
    y = torch.tensor([2, 0, 1, 0, 2, 1, 0, 2, 1, 0, 1, 2])
    keep = data.stratified_subset(y, 8, 3)  # 8 = 3 * 2 + 2: classes 0 and 1 get 3, class 2 gets 2
    assert torch.equal(keep, keep.sort().values)
    assert torch.bincount(y[keep], minlength=3).tolist() == [3, 3, 2]
    assert keep.tolist() == [0, 1, 2, 3, 4, 5, 6, 8]  # the first ones of each class


@pytest.mark.parametrize('n', [2, 13])
def test_stratified_subset_rejects_bad_sizes(n):
    y = torch.arange(12) % 3
    with pytest.raises(ValueError, match=f'n_train={n}.*3.*12'):
        data.stratified_subset(y, n, 3)


def test_stratified_subset_rejects_short_class():
    y = torch.tensor([0, 0, 0, 0, 1])
    with pytest.raises(ValueError, match='class 1 has 1'):
        data.stratified_subset(y, 4, 2)


def test_load_dataset_n_train_subsets_the_training_set():
    cfg = data.SyntheticConfig(n_train_per_class=20, n_test_per_class=5)
    full = data.load_dataset('synthetic', None, synthetic=cfg)
    sub = data.load_dataset('synthetic', None, synthetic=cfg, n_train=55)
    assert len(sub.y_train) == 55 and torch.bincount(sub.y_train).tolist() == [6] * 5 + [5] * 5
    keep = data.stratified_subset(full.y_train, 55, 10)
    assert torch.equal(sub.x_train, full.x_train[keep])
    assert torch.equal(sub.x_test, full.x_test)


# ----- long_tailed_subset (CIFAR-LT) -----------------------------------------------------------

def official_long_tail(targets, cls_num, imb_factor):
    """A literal re-statement of the official generator: wutong16/Adversarial_Long-Tail
    datasets/datasets.py (IMBALANCECIFAR10: np.random.seed(0) at lines 23-24,
    get_img_num_per_cls 'exp' at lines 37-43, gen_imbalanced_data at lines 119-140)."""
    np.random.seed(0)
    img_max = len(targets) / cls_num
    img_num_per_cls = [int(img_max * (imb_factor ** (i / (cls_num - 1.0)))) for i in range(cls_num)]
    targets_np = np.array(targets, dtype=np.int64)
    selected = []
    for the_class, the_img_num in zip(np.unique(targets_np), img_num_per_cls):
        idx = np.where(targets_np == the_class)[0]
        np.random.shuffle(idx)
        selected.append(idx[:the_img_num])
    return np.concatenate(selected), img_num_per_cls


def test_long_tailed_subset_is_the_official_generator_on_cifar10_sizes():
    y = torch.arange(50000) % 10  # CIFAR-10's 5,000 training images per class, interleaved
    keep, left_out = data.long_tailed_subset(y, 10, 0.02)
    expected, counts = official_long_tail(y.tolist(), 10, 0.02)
    assert counts == [5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100]  # 13,996 in all
    assert keep.tolist() == expected.tolist()
    assert torch.bincount(y[keep]).tolist() == counts
    assert sorted(keep.tolist() + left_out.tolist()) == list(range(50000))
    # The global numpy state is not the generator's: the official seeding is not repeated here.
    state = np.random.get_state()
    data.long_tailed_subset(y, 10, 0.02)
    assert np.random.get_state()[1].tolist() == state[1].tolist()


@pytest.mark.parametrize('ratio', [0.0, 1.5])
def test_long_tailed_subset_rejects_bad_ratios(ratio):
    with pytest.raises(ValueError, match=f'imbalance_ratio={ratio}'):
        data.long_tailed_subset(torch.arange(20) % 2, 2, ratio)


def test_long_tailed_validation_comes_from_the_left_out_images():
    cfg = data.SyntheticConfig(num_classes=4, n_train_per_class=40, n_test_per_class=5)
    full = data.load_dataset('synthetic', None, synthetic=cfg)
    lt = data.load_dataset('synthetic', None, synthetic=cfg, imbalance_ratio=0.1)
    counts = [40, 18, 8, 4]  # int(40 * 0.1 ** (c / 3))
    assert torch.bincount(lt.y_train).tolist() == counts
    assert torch.equal(lt.x_test, full.x_test)
    kept_x = lt.x_train.clone()
    lt.hold_out_validation(6)
    assert torch.bincount(lt.y_val).tolist() == [6] * 4
    # The tail keeps every image; the head, which left none out, gives its last 6.
    assert torch.bincount(lt.y_train).tolist() == [34, 18, 8, 4]
    assert torch.equal(lt.x_train, torch.cat([kept_x[:34], kept_x[40:]]))
    seen = {bytes(x.numpy()) for x in lt.x_train}
    assert not any(bytes(x.numpy()) in seen for x in lt.x_val)
    assert lt.x_spare is None
    # The head class left nothing out: a split larger than it is refused (not cut short).
    head_only = data.load_dataset('synthetic', None, synthetic=cfg, imbalance_ratio=0.1)
    with pytest.raises(ValueError, match='has 40 training images, so holding out 41'):
        head_only.hold_out_validation(41)


# ----- synthetic ------------------------------------------------------------------------------

def test_synthetic_shapes_and_determinism():
    cfg = data.SyntheticConfig(n_train_per_class=30, n_test_per_class=10)
    a = make_synthetic(cfg, seed=1)
    b = make_synthetic(cfg, seed=1)
    c = make_synthetic(cfg, seed=2)
    x_train, y_train, x_test, y_test, names = a
    assert x_train.shape == (300, 3, 16, 16) and x_test.shape == (100, 3, 16, 16)
    assert x_train.dtype == torch.uint8 and y_train.dtype == torch.int64
    assert torch.bincount(y_train).tolist() == [30] * 10
    assert names == ['g0a', 'g0b', 'g0c', 'f3', 'f4', 'f5', 'f6', 'f7', 'f8', 'f9']
    for u, v in zip(a[:4], b[:4]):
        assert torch.equal(u, v)
    assert not torch.equal(a[0], c[0])
    # Uses uint8's range, not a sliver of it.
    assert x_train.min() < 20 and x_train.max() > 235


def test_synthetic_does_not_touch_global_rng():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    make_synthetic(data.SyntheticConfig(n_train_per_class=2, n_test_per_class=2), seed=1)
    assert torch.equal(torch.rand(3), expected)


def test_synthetic_template_distances_are_exact():
    cfg = data.SyntheticConfig(num_classes=7, close_groups='0,1;3,4,5', close_distance=0.7,
                               far_distance=2.5)
    d = template_distances(cfg, seed=4)
    group = torch.tensor([0, 0, -1, 1, 1, 1, -2])  # distinct negatives: singletons
    same = group[:, None] == group[None, :]
    off_diag = ~torch.eye(7, dtype=torch.bool)
    # Exact up to float64 rounding of an orthonormal basis (QR), i.e. ~1e-15 relative.
    torch.testing.assert_close(d[same & off_diag], torch.full(((same & off_diag).sum(),), 0.7,
                                                              dtype=torch.float64))
    torch.testing.assert_close(d[~same], torch.full(((~same).sum(),), 2.5, dtype=torch.float64))


def test_synthetic_samples_reflect_template_distances():
    cfg = data.SyntheticConfig(n_train_per_class=400, n_test_per_class=1)
    x, y = make_synthetic(cfg, seed=0)[:2]
    x = x.double() / 255
    means = torch.stack([x[y == c].mean(0).flatten() for c in range(10)])
    d = torch.cdist(means, means)
    # Class means carry noise of squared norm noise^2 * 768 / 400 ~ 0.02 each, and
    # quantisation/clamping is below that, so 5% bounds the error on distance 1.
    assert ((d[0, 1:3] - 1.0).abs() < 0.05).all() and ((d[1, 2] - 1.0).abs() < 0.05)
    assert ((d[0, 3:] - 3.0).abs() < 0.05).all() and ((d[5, 6:] - 3.0).abs() < 0.05).all()


def test_synthetic_close_noise_widens_only_close_classes():
    cfg = data.SyntheticConfig(n_train_per_class=200, n_test_per_class=1, close_noise=0.2)
    x, y = make_synthetic(cfg, seed=0)[:2]
    std = torch.stack([(x[y == c].float() / 255).std(0).mean() for c in range(10)])
    assert (std[:3] > 0.17).all() and (std[3:] < 0.11).all()


def test_synthetic_config_validation():
    with pytest.raises(ValueError, match='close_distance'):
        data.SyntheticConfig(close_distance=4.0, far_distance=3.0)
    with pytest.raises(ValueError, match='close_groups'):
        data.SyntheticConfig(close_groups='0,10')
    with pytest.raises(ValueError, match='close_groups'):
        parse_close_groups('0,a')
    with pytest.raises(ValueError, match='far_distance'):
        template_distances(data.SyntheticConfig(far_distance=20.0), seed=0)


def test_synthetic_arguments_round_trip():
    parser = argparse.ArgumentParser()
    data.add_synthetic_arguments(parser)
    assert data.synthetic_config_from_args(parser.parse_args([])) == data.SyntheticConfig()
    args = parser.parse_args(['--synthetic_close_groups', '0,1;2,3,4', '--synthetic_noise', '0.2',
                              '--synthetic_close_noise', '0.3', '--synthetic_num_classes', '6'])
    cfg = data.synthetic_config_from_args(args)
    assert cfg.close_groups == ((0, 1), (2, 3, 4)) and cfg.num_classes == 6
    assert cfg.noise == 0.2 and cfg.close_noise == 0.3
    assert data.synthetic_config_from_args(
        parser.parse_args(['--synthetic_close_groups', ''])).close_groups == ()


def test_load_dataset_synthetic():
    ds = data.load_dataset('synthetic', None, seed=5,
                           synthetic=data.SyntheticConfig(n_train_per_class=3, n_test_per_class=2))
    assert ds.name == 'synthetic' and ds.num_classes == 10 and ds.image_size == 16
    assert len(ds.y_train) == 30 and len(ds.y_test) == 20


# ----- folder ---------------------------------------------------------------------------------

def write_folder(root, seed=0):
    """root/{train,test}/{cat,ant}/*.png with random pixels; returns {relative path: HWC array}."""
    rng = np.random.default_rng(seed)
    images = {}
    for split, count in (('train', 3), ('test', 2)):
        for cls in ('cat', 'ant'):  # created unsorted on purpose
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f'{i}.png')
                images[f'{split}/{cls}/{i}.png'] = pixels
    (root / 'train' / 'cat' / 'notes.txt').write_text('not an image')
    return images


def expected_split(images, split):
    names = sorted(p for p in images if p.startswith(split + '/'))
    x = torch.from_numpy(np.stack([images[p] for p in names])).permute(0, 3, 1, 2)
    y = torch.tensor([['ant', 'cat'].index(p.split('/')[1]) for p in names])
    return x, y


@pytest.mark.parametrize('num_workers', [0, 2])
def test_folder_round_trip(tmp_path, num_workers):
    images = write_folder(tmp_path)
    ds = data.load_dataset('folder', tmp_path, num_workers=num_workers)
    assert ds.class_names == ['ant', 'cat'] and ds.image_size == 6
    for split in ('train', 'test'):
        x, y = expected_split(images, split)
        assert torch.equal(getattr(ds, f'x_{split}'), x)  # PNG is lossless: exact bytes
        assert torch.equal(getattr(ds, f'y_{split}'), y)


def test_folder_cache_is_used_and_invalidated(tmp_path, monkeypatch):
    images = write_folder(tmp_path)
    first = data.load_dataset('folder', tmp_path)
    assert (tmp_path / folder_module.CACHE_NAME).is_file()

    def no_decoding(*args):
        raise AssertionError('decoded although the cache is valid')
    monkeypatch.setattr(folder_module, '_decode_all', no_decoding)
    second = data.load_dataset('folder', tmp_path)
    assert torch.equal(first.x_train, second.x_train) and torch.equal(first.y_test, second.y_test)

    # Changing one image (new content and mtime) must trigger a new decode.
    monkeypatch.undo()
    path = tmp_path / 'train' / 'ant' / '0.png'
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(path)
    os.utime(path, ns=(1, 1))
    third = data.load_dataset('folder', tmp_path)
    assert third.x_train[0].sum() == 0
    assert torch.equal(third.x_train[1:], first.x_train[1:])
    x, _ = expected_split(images, 'train')
    assert torch.equal(first.x_train, x)


def test_a_crafted_decode_cache_is_decoded_again(tmp_path):
    """A cache file that is not what the folder's files decode to (another object; this
    folder's fingerprint over other labels or images of another type) is ignored, never used."""
    write_folder(tmp_path)
    first = data.load_dataset('folder', tmp_path)
    cache = tmp_path / folder_module.CACHE_NAME
    blob = torch.load(cache, weights_only=True)
    crafted = [[1, 2, 3],
               dict(blob, y_train=1 - blob['y_train']),
               dict(blob, x_test=blob['x_test'].float())]
    for content in crafted:
        torch.save(content, cache)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            again = data.load_dataset('folder', tmp_path)
        assert torch.equal(again.y_train, first.y_train)
        assert torch.equal(again.x_test, first.x_test)


def test_folder_unwritable_cache_warns_and_loads(tmp_path, monkeypatch):
    write_folder(tmp_path)

    def read_only(*args):
        raise PermissionError('read-only file system')
    monkeypatch.setattr(folder_module.torch, 'save', read_only)
    with pytest.warns(UserWarning, match='cannot write decode cache'):
        ds = data.load_dataset('folder', tmp_path)
    assert len(ds.y_train) == 6 and not (tmp_path / folder_module.CACHE_NAME).exists()


def test_folder_cache_is_keyed_by_content_not_size_and_mtime(tmp_path):
    # BMP files of one size all have the same length: a replaced image keeps size and mtime.
    for split in ('train', 'test'):
        for cls in ('ant', 'cat'):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                pixels = np.full((6, 6, 3), 40 * i + (cls == 'cat') * 100, np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / cls / f'{i}.bmp')
    first = data.load_dataset('folder', tmp_path)
    path = tmp_path / 'test' / 'ant' / '0.bmp'
    stat = path.stat()
    Image.fromarray(np.full((6, 6, 3), 255, np.uint8)).save(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    second = data.load_dataset('folder', tmp_path)
    assert int(second.x_test[0].min()) == 255  # decoded again, not the stale cache
    assert second.test_fingerprint != first.test_fingerprint  # eval.py refuses old checkpoints


def test_folder_read_only_decodes_in_memory_with_one_warning(tmp_path):
    write_folder(tmp_path)
    # What torch.save does in a folder it cannot write: raise RuntimeError (a directory in
    # the way of its temporary file gives the same error to any user, root included).
    (tmp_path / f'{folder_module.CACHE_NAME}.tmp{os.getpid()}').mkdir()
    with pytest.warns(UserWarning, match='cannot write decode cache') as caught:
        ds = data.load_dataset('folder', tmp_path)
    assert len(caught) == 1
    assert len(ds.y_train) == 6 and not (tmp_path / folder_module.CACHE_NAME).exists()


def test_folder_missing_test_split(tmp_path):
    (tmp_path / 'train' / 'cat').mkdir(parents=True)
    with pytest.raises(UserError, match=r'DIR/test/<class>'):
        data.load_dataset('folder', tmp_path)


def test_folder_mismatched_classes_and_sizes(tmp_path):
    write_folder(tmp_path)
    (tmp_path / 'test' / 'dog').mkdir()
    with pytest.raises(UserError, match='same class folders'):
        data.load_dataset('folder', tmp_path)
    (tmp_path / 'test' / 'dog').rmdir()
    bad = tmp_path / 'test' / 'cat' / '9.png'
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(bad)
    with pytest.raises(UserError, match=re.escape(f'{bad} is 5x5 px')):
        data.load_dataset('folder', tmp_path)


# ----- torchvision datasets -------------------------------------------------------------------

def test_cifar10_offline_raises_actionable_error(tmp_path, monkeypatch):
    # Refuse every download, so the test never waits on (or uses) the network.
    def offline(*args, **kwargs):
        raise urllib.error.URLError('network disabled in tests')
    monkeypatch.setattr(urllib.request, 'urlopen', offline)
    with pytest.raises(UserError) as info:
        data.load_dataset('cifar10', tmp_path)
    message = str(info.value)
    assert '--data_dir' in message and 'cifar-10-batches-py' in message
    assert '--dataset folder' in message and '\n' not in message
    assert isinstance(info.value.__cause__, Exception)


def test_cifar_and_stl10_conversion(monkeypatch):
    """Fake torchvision classes: checks the layout/dtype conversion and the STL-10 resize."""
    rng = np.random.default_rng(0)
    cifar = SimpleNamespace(data=rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8),
                            targets=[0, 1, 1, 0], classes=['a', 'b'])
    # Constant 96 px images resize to the same constant, which pins down the value range.
    stl = SimpleNamespace(data=np.full((3, 3, 96, 96), 200, dtype=np.uint8),
                          labels=np.array([1, 0, 1]), classes=['a', 'b'])
    monkeypatch.setitem(datasets_module._TORCHVISION, 'cifar10',
                        (lambda *a, **k: cifar, 'cifar-10-batches-py'))
    monkeypatch.setitem(datasets_module._TORCHVISION, 'stl10',
                        (lambda *a, **k: stl, 'stl10_binary'))
    ds = data.load_dataset('cifar10', '/nonexistent')
    assert ds.x_train.shape == (4, 3, 32, 32) and ds.x_train.dtype == torch.uint8
    assert torch.equal(ds.x_train, torch.from_numpy(cifar.data).permute(0, 3, 1, 2))
    assert ds.y_train.tolist() == [0, 1, 1, 0] and ds.class_names == ['a', 'b']
    ds = data.load_dataset('stl10', '/nonexistent')
    assert ds.image_size == 64 and ds.x_test.dtype == torch.uint8
    assert (ds.x_train == 200).all() and ds.y_train.tolist() == [1, 0, 1]


def test_unknown_dataset_name():
    with pytest.raises(UserError, match="'imagenet'.*cifar10.*synthetic"):
        data.load_dataset('imagenet', '/tmp')
