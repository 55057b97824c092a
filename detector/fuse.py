"""Inference-time folding of BatchNorm into the preceding convolution.

In eval mode a BatchNorm is a per-channel affine map, so ``bn(conv(x))`` equals one convolution with rescaled
weights and a bias. Folding removes a memory-bound pass over every backbone feature map; the outputs agree with
the unfused model to float rounding. It is only for inference: the folded model has no BatchNorm left to train,
so :func:`fuse_for_inference` returns a fused *copy* and leaves the original untouched.
"""
from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def _fuse_pairs(module: nn.Module, pairs: list[tuple[str, str]]) -> int:
    fused = 0
    for conv_name, bn_name in pairs:
        conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
        if type(conv) is nn.Conv2d and isinstance(bn, nn.BatchNorm2d):  # DCN convs are left as they are
            setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
            setattr(module, bn_name, nn.Identity())
            fused += 1
    return fused


def fuse_conv_bn(model: nn.Module) -> int:
    """Fold BatchNorm into convolutions of torchvision ResNet stems, blocks and downsample paths, in place.

    The model must be in eval mode. Returns the number of folded pairs.
    """
    if model.training:
        raise RuntimeError("fuse_conv_bn: call model.eval() first (BatchNorm must use its running statistics)")
    fused = 0
    for m in model.modules():
        fused += _fuse_pairs(m, [("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")])
        if isinstance(m, nn.Sequential) and len(m) == 2 and type(m[0]) is nn.Conv2d and isinstance(m[1], nn.BatchNorm2d):
            m[0], m[1] = fuse_conv_bn_eval(m[0], m[1]), nn.Identity()  # a downsample path
            fused += 1
    return fused


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with BatchNorm folded into the convolutions."""
    fused = copy.deepcopy(model).eval()
    fuse_conv_bn(fused)
    return fused
