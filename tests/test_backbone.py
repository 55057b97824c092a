"""Backbone variants, freezing, eval-mode BatchNorm, DCNv2 and weight loading (CPU, random init, small inputs)."""
from __future__ import annotations

import logging

import pytest
import torch
import torchvision
from torch import nn

from detector.backbone import ModulatedDeformConv2d, ResNetBackbone


def _bn_stats(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running_" in k}


@pytest.mark.parametrize("name,dcn", [("resnet50", None), ("resnet101", None), ("resnext101_64x4d", None),
                                      ("resnet50", [False, True, True, True])])
def test_variant_forward_backward_frozen(name, dcn):
    torch.manual_seed(0)
    b = ResNetBackbone(name, dcn_stages=dcn or [False] * 4).train()
    stats = _bn_stats(b)
    outs = b(torch.randn(1, 3, 64, 64))
    assert [o.shape for o in outs] == [(1, 512, 8, 8), (1, 1024, 4, 4), (1, 2048, 2, 2)]
    assert b.out_channels == [512, 1024, 2048]
    sum(o.square().mean() for o in outs).backward()
    for prefix in ("conv1.", "bn1.", "layer1."):  # stem + stage 1 frozen
        for n, p in b.named_parameters():
            if n.startswith(prefix):
                assert not p.requires_grad and p.grad is None, n
    assert b.layer2[0].conv1.weight.grad.abs().sum() > 0
    assert b.layer4[-1].bn3.weight.grad is not None  # affine of unfrozen BN trains (mmdet norm_eval)
    after = _bn_stats(b)
    assert all(torch.equal(stats[k], after[k]) for k in stats)  # norm_eval: statistics never move
    dcns = [m for m in b.modules() if isinstance(m, ModulatedDeformConv2d)]
    assert len(dcns) == (4 + 6 + 3 if dcn else 0)
    for m in dcns:
        assert m.conv_offset.weight.grad.abs().sum() > 0 and m.conv_offset.bias.grad.abs().sum() > 0


@pytest.mark.parametrize("stride,groups", [(1, 1), (2, 4)])
def test_dcn_at_init_is_half_the_plain_conv(stride, groups):
    # offsets 0 and masks sigmoid(0) = 0.5: the layer equals 0.5 * the conv it was built from
    conv = nn.Conv2d(16, 24, 3, stride, 1, groups=groups, bias=False)
    dcn = ModulatedDeformConv2d.from_conv(conv)
    x = torch.randn(2, 16, 9, 11)
    torch.testing.assert_close(dcn(x), 0.5 * conv(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dcn(x.to(memory_format=torch.channels_last)), 0.5 * conv(x), rtol=1e-4, atol=1e-5)
    assert dcn.conv_offset.out_channels == 27 and torch.equal(dcn.weight, conv.weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # deform_conv2d has no bf16 CPU kernel: run in fp32
        low = dcn(x.bfloat16())
    torch.testing.assert_close(low.float(), 0.5 * conv(x), rtol=0.05, atol=0.05)


def test_norm_eval_false_trains_unfrozen_bn_only():
    b = ResNetBackbone("resnet18", norm_eval=False).train()
    before = _bn_stats(b)
    b(torch.randn(2, 3, 64, 64))
    after = _bn_stats(b)
    assert torch.equal(before["bn1.running_mean"], after["bn1.running_mean"])
    assert torch.equal(before["layer1.0.bn1.running_mean"], after["layer1.0.bn1.running_mean"])
    assert not torch.equal(before["layer2.0.bn1.running_mean"], after["layer2.0.bn1.running_mean"])


def test_frozen_stages_range_and_basic_block_channels():
    b = ResNetBackbone("resnet18", frozen_stages=-1)
    assert all(p.requires_grad for p in b.parameters())
    assert b.out_channels == [128, 256, 512]
    b2 = ResNetBackbone("resnet34", frozen_stages=3)
    assert not any(p.requires_grad for p in b2.layer3.parameters())
    assert all(p.requires_grad for p in b2.layer4.parameters())


def test_channels_last_matches():
    b = ResNetBackbone("resnet18").eval()
    x = torch.randn(1, 3, 64, 64)
    ref = b(x)
    out = b.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    for r, o in zip(ref, out):
        torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-4)


def test_local_weights_loaded_and_bad_keys_reported(tmp_path, caplog):
    src = torchvision.models.resnet18()
    state = src.state_dict()
    del state["layer3.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    with caplog.at_level(logging.WARNING, logger="detector.backbone"):
        b = ResNetBackbone("resnet18", weights=str(path))
    assert torch.equal(b.layer4[1].conv2.weight, src.layer4[1].conv2.weight)
    assert torch.equal(b.bn1.running_var, src.bn1.running_var)
    assert "layer3.0.conv1.weight" in caplog.text and "extra.weight" in caplog.text
    assert "fc.weight" not in caplog.text  # the classifier is dropped silently


def test_dcn_takes_the_checkpoint_conv_weight(tmp_path, caplog):
    src = torchvision.models.resnet50()
    path = tmp_path / "r50.pth"
    torch.save({"state_dict": src.state_dict()}, path)
    with caplog.at_level(logging.WARNING, logger="detector.backbone"):
        b = ResNetBackbone("resnet50", weights=str(path), dcn_stages=[False, False, True, True])
    assert isinstance(b.layer3[2].conv2, ModulatedDeformConv2d)
    assert torch.equal(b.layer3[2].conv2.weight, src.layer3[2].conv2.weight)
    assert torch.equal(b.layer4[0].conv2.weight, src.layer4[0].conv2.weight)
    assert caplog.text == ""  # the zero-initialised offset convs are expected to be missing


def test_bad_names_raise_clear_errors(tmp_path):
    with pytest.raises(KeyError, match="resnext101_64x4d"):
        ResNetBackbone("resnet52")
    with pytest.raises(KeyError, match="IMAGENET1K_V1"):
        ResNetBackbone("resnet18", weights="IMAGENET9K")
    with pytest.raises(FileNotFoundError, match="model.backbone.weights"):
        ResNetBackbone("resnet18", weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="bottleneck"):
        ResNetBackbone("resnet18", dcn_stages=[False, True, False, False])
