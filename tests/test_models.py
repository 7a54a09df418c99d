"""Tests for the model registry (CPU only; about 20 s on 2 idle cores)."""
import pytest
import torch
import torch.nn as nn

import models
from models.wideresnet import WideResNet

SIZES = (32, 64)
# Official counts at 32px (WRN without the unused sub_block1).
PARAM_COUNTS_32 = {
    "resnet": 11_173_962,
    "pre-resnet": 11_172_170,
    # hannxu123/fair_robust pre_resnet.py's PreActResNet18(): no final BatchNorm (l. 64-69).
    "pre-resnet-frl": 11_171_146,
    "wrn-28-10": 36_479_194,
    "wrn-34-10": 46_160_474,
}
# (classifier attribute, in_features at 32px, at 64px)
CLASSIFIER = {
    "resnet": ("linear", 512, 2048),
    "pre-resnet": ("linear", 512, 2048),
    "pre-resnet-frl": ("linear", 512, 2048),
    "wrn-28-10": ("fc", 640, 2560),
    "wrn-34-10": ("fc", 640, 2560),
    "small-cnn": ("linear", 96, 96),
}


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_names():
    assert set(models.MODELS) == {"resnet", "pre-resnet", "pre-resnet-frl", "wrn-28-10",
                                  "wrn-34-10", "small-cnn"}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_forward_backward(name, size):
    torch.manual_seed(0)
    num_classes = 100 if name == "resnet" else 10
    model = models.create(name, num_classes=num_classes, image_size=size).train()
    # The input gradient is what the attacks use.
    x = torch.rand(2, 3, size, size, requires_grad=True)
    out = model(x)
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()
    out.logsumexp(dim=1).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname


# wrn-34-10 shares every code path with wrn-28-10; skipped to save time.
@pytest.mark.parametrize("name", sorted(set(models.MODELS) - {"wrn-34-10"}))
def test_channels_last_matches_contiguous(name):
    # 64px so the pooled 2x2 map (flattened into the classifier) is exercised.
    torch.manual_seed(0)
    model = models.create(name, image_size=64).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name,count", sorted(PARAM_COUNTS_32.items()))
def test_param_counts(name, count):
    assert num_params(models.create(name)) == count


def test_small_cnn_is_small():
    assert 10_000 < num_params(models.create("small-cnn")) < 100_000


@pytest.mark.parametrize("name", sorted(models.MODELS))
@pytest.mark.parametrize("size", SIZES)
def test_classifier_in_features(name, size):
    attr, in_32, in_64 = CLASSIFIER[name]
    head = getattr(models.create(name, image_size=size), attr)
    assert isinstance(head, nn.Linear)
    assert head.in_features == (in_32 if size == 32 else in_64)


def test_resnet_state_dict_keys():
    keys = set(models.create("resnet").state_dict())
    for k in ["conv1.weight", "bn1.running_mean", "layer4.1.conv2.weight",
              "layer2.0.shortcut.0.weight", "layer2.0.shortcut.1.weight",
              "layer2.0.shortcut.1.running_var", "linear.weight", "linear.bias"]:
        assert k in keys, k
    # Identity shortcuts carry no parameters.
    assert not any(k.startswith("layer1.0.shortcut") for k in keys)


def test_preact_resnet_state_dict_keys():
    keys = set(models.create("pre-resnet").state_dict())
    for k in ["conv1.weight", "layer1.0.bn1.weight", "layer1.0.conv1.weight",
              "layer1.0.bn2.running_mean", "layer3.0.shortcut.0.weight",
              "bn.weight", "bn.running_var", "linear.weight"]:
        assert k in keys, k
    assert "bn1.weight" not in keys
    assert not any(k.startswith("layer1.0.shortcut") for k in keys)


def test_frls_preact_resnet_has_no_final_batchnorm():
    """FRL's PreActResNet18 (hannxu123/fair_robust pre_resnet.py l. 59-88) pools the last
    block's output directly: the keys of CFA's network (PKU-ML/CFA model.py l. 69) less `bn.`,
    and its forward is CFA's without the last BN + ReLU (l. 86)."""
    frl, cfa = models.create("pre-resnet-frl").eval(), models.create("pre-resnet").eval()
    assert set(frl.state_dict()) == {k for k in cfa.state_dict() if not k.startswith("bn.")}
    cfa.load_state_dict(frl.state_dict(), strict=False)
    cfa.bn = nn.Identity()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        frl_out = frl(x)
        # Without the final BN, the only difference left is the ReLU before the pooling.
        assert not torch.allclose(frl_out, cfa(x))
        features = frl.layer4(frl.layer3(frl.layer2(frl.layer1(frl.conv1(x)))))
        pooled = torch.flatten(torch.nn.functional.avg_pool2d(features, 4), 1)
        assert torch.equal(frl_out, frl.linear(pooled))


@pytest.mark.parametrize("name", ["wrn-28-10", "wrn-34-10"])
def test_wrn_state_dict_keys(name):
    depth = int(name.split("-")[1])
    n = (depth - 4) // 6
    keys = set(models.create(name).state_dict())
    for k in ["conv1.weight", "block1.layer.0.conv1.weight", "block1.layer.0.bn1.running_mean",
              "block1.layer.0.convShortcut.weight", "block2.layer.0.convShortcut.weight",
              f"block3.layer.{n - 1}.conv2.weight", "bn1.weight", "fc.weight", "fc.bias"]:
        assert k in keys, k
    assert f"block3.layer.{n}.conv1.weight" not in keys
    # equalInOut blocks have no projection.
    assert "block1.layer.1.convShortcut.weight" not in keys
    assert not any(k.startswith("sub_block1.") for k in keys)


def _with_sub_block1(state_dict):
    """Mimic an official WRN checkpoint: block1's keys duplicated as sub_block1."""
    sd = dict(state_dict)
    for k, v in state_dict.items():
        if k.startswith("block1."):
            sd["sub_block1." + k[len("block1."):]] = torch.randn_like(v.float()).to(v.dtype)
    return sd


@pytest.mark.parametrize("name", ["wrn-28-10", "wrn-34-10"])
def test_wrn_loads_official_state_dict_with_sub_block1(name):
    sd = _with_sub_block1(models.create(name).state_dict())
    assert any(k.startswith("sub_block1.") for k in sd)
    result = models.create(name).load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert "sub_block1.layer.0.conv1.weight" in sd  # the caller's dict is untouched


# The tests below exercise the same load hook on a tiny WRN to stay fast.
def test_wrn_sub_block1_load_preserves_outputs():
    torch.manual_seed(0)
    src = WideResNet(depth=10, widen_factor=2).eval()
    dst = WideResNet(depth=10, widen_factor=2).eval()
    dst.load_state_dict(_with_sub_block1(src.state_dict()), strict=True)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x))


def test_wrn_sub_block1_dropped_under_a_prefix():
    # e.g. the WRN nested inside a wrapper module.
    wrapper = nn.Sequential(WideResNet(depth=10, widen_factor=2))
    sd = {"0." + k: v for k, v in _with_sub_block1(wrapper[0].state_dict()).items()}
    wrapper.load_state_dict(sd, strict=True)


def test_wrn_strict_load_still_catches_real_mismatches():
    model = WideResNet(depth=10, widen_factor=2)
    sd = _with_sub_block1(model.state_dict())
    del sd["fc.weight"]
    sd["block9.weight"] = torch.zeros(1)
    with pytest.raises(RuntimeError) as err:
        model.load_state_dict(sd, strict=True)
    assert "fc.weight" in str(err.value) and "block9.weight" in str(err.value)


def test_wrn_init():
    model = models.create("wrn-28-10")
    conv = model.block2.layer[0].conv1
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert abs(conv.weight.std().item() - (2.0 / fan_out) ** 0.5) < 0.05 * (2.0 / fan_out) ** 0.5
    assert torch.all(model.bn1.weight == 1) and torch.all(model.bn1.bias == 0)
    assert torch.all(model.fc.bias == 0)


def test_small_cnn_other_sizes_and_batchnorm():
    torch.manual_seed(0)
    model = models.create("small-cnn", num_classes=3, image_size=16)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    for size in (8, 16, 28):
        assert model(torch.rand(4, 3, size, size)).shape == (4, 3)
    # Train mode uses batch statistics, eval mode the running ones.
    x = torch.rand(8, 3, 16, 16)
    with torch.no_grad():
        train_out = model.train()(x)
        eval_out = model.eval()(x)
    assert not torch.allclose(train_out, eval_out)


def test_no_normalization_inside():
    # Inputs are raw [0, 1] images as in the official models: every leaf module
    # is a conv, BN, ReLU, linear or an empty (identity) Sequential shortcut,
    # so no mean/std normaliser hides inside.
    allowed = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Linear, nn.Sequential)
    for name in models.MODELS:
        for m in models.create(name).modules():
            if not list(m.children()):
                assert isinstance(m, allowed), (name, m)


def test_normalize_is_the_first_step_inside_and_leaves_the_keys_alone():
    """normalize=(mean, std): the model computes f((x - mean) / std) on [0, 1] inputs, as CFA's
    model(normalize_cifar(x)) (PKU-ML/CFA utils.py l. 11-12, 22-23); the state_dict keys are the
    architecture's (the statistics are no weights), and a copy and .double() carry it along."""
    import copy
    mean, std = [0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616]
    torch.manual_seed(0)
    plain = models.create("pre-resnet").eval()
    inside = models.create("pre-resnet", normalize=(mean, std)).eval()
    assert set(inside.state_dict()) == set(plain.state_dict())
    inside.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    normalized = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    with torch.no_grad():
        assert torch.equal(inside(x), plain(normalized))
        assert not torch.allclose(inside(x), plain(x))
        assert torch.equal(copy.deepcopy(inside)(x), inside(x))
        assert torch.allclose(inside.double()(x.double()), plain.double()(normalized.double()))


def test_unknown_name_raises():
    with pytest.raises(ValueError) as err:
        models.create("nope")
    msg = str(err.value)
    assert "'nope'" in msg
    for name in models.MODELS:
        assert name in msg


@pytest.mark.parametrize("name", ["resnet", "pre-resnet", "wrn-28-10", "wrn-34-10"])
def test_unsupported_image_size_raises(name):
    with pytest.raises(ValueError) as err:
        models.create(name, image_size=48)
    msg = str(err.value)
    assert "48" in msg and "32" in msg and "64" in msg and name in msg


def test_small_cnn_too_small_image_raises():
    with pytest.raises(ValueError, match=">= 8"):
        models.create("small-cnn", image_size=4)


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_bad_num_classes_raises(bad):
    with pytest.raises(ValueError, match="num_classes"):
        models.create("small-cnn", num_classes=bad)
