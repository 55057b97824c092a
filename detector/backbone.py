"""ResNet / ResNeXt bodies from torchvision with frozen stages, eval-mode BatchNorm and optional DCNv2.

``norm_eval`` reproduces mmdet 2.1's ``norm_eval=True`` with ``requires_grad=True`` (docs/REPRODUCTION.md §5): every
BatchNorm layer stays in eval mode (running statistics are used and never updated), while the affine
parameters outside the frozen stages keep training. Frozen stages (``frozen_stages``: -1 none, 0 stem,
k stem + res2..res(k+1)) get ``requires_grad=False`` everywhere. Module names are torchvision's, so
torchvision checkpoints load key for key (a DCN layer keeps its conv's ``weight`` name).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torchvision.ops import deform_conv2d

__all__ = ["BACKBONES", "ModulatedDeformConv2d", "ResNetBackbone", "load_backbone_weights"]

log = logging.getLogger(__name__)

# name -> torchvision constructor; resnet18/34 (BasicBlock) are for quick CPU configs.
BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
    "resnet101": torchvision.models.resnet101,
    "resnext101_64x4d": torchvision.models.resnext101_64x4d,
}


class ModulatedDeformConv2d(nn.Module):
    """DCNv2: a deformable conv whose per-tap offsets and sigmoid masks come from a zero-initialised conv.

    At initialisation the offsets are 0 and the masks 0.5 (as in mmcv's ``ModulatedDeformConv2dPack``);
    ``weight`` has the shape and name of the ``nn.Conv2d`` it replaces.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, dilation: int = 1, groups: int = 1, offset_groups: int = 1,
                 bias: bool = False) -> None:
        super().__init__()
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        taps = kernel_size * kernel_size
        # 2 offsets (dy, dx) and 1 mask logit per tap and offset group.
        self.conv_offset = nn.Conv2d(in_channels, offset_groups * 3 * taps, kernel_size, stride, padding, dilation)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, offset_groups: int = 1) -> ModulatedDeformConv2d:
        """A DCNv2 layer with the geometry and a copy of the weights of ``conv``."""
        dcn = cls(conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0], conv.padding[0],
                  conv.dilation[0], conv.groups, offset_groups, bias=conv.bias is not None)
        with torch.no_grad():
            dcn.weight.copy_(conv.weight)
            if conv.bias is not None:
                dcn.bias.copy_(conv.bias)
        return dcn

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv_offset(x)  # (N, 3 * G * k * k, H', W')
        o1, o2, m = out.chunk(3, dim=1)
        offset = torch.cat([o1, o2], dim=1)  # (N, 2 * G * k * k, H', W')
        w = self.weight
        with torch.autocast(x.device.type, enabled=False):  # no low-precision CPU kernel: run in the weight dtype
            return deform_conv2d(x.to(w.dtype), offset.to(w.dtype), w, self.bias, stride=self.stride,
                                 padding=self.padding, dilation=self.dilation, mask=m.sigmoid().to(w.dtype))


def _read_state_dict(name: str, weights: str) -> dict[str, Tensor]:
    """A backbone state dict from a local file or a torchvision weights enum name (e.g. IMAGENET1K_V1)."""
    path = Path(weights).expanduser()
    if path.suffix in (".pth", ".pt", ".pkl") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"model.backbone.weights: file not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
        if not isinstance(state, dict):
            raise ValueError(f"model.backbone.weights: {path} does not hold a state dict")
        return {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}
    enum = torchvision.models.get_model_weights(name)
    member = weights.split(".")[-1]
    if member not in enum.__members__:
        raise KeyError(f"model.backbone.weights: '{weights}' is neither a file nor a weights name of {name}; "
                       f"valid names: {', '.join(enum.__members__)}")
    return enum[member].get_state_dict(progress=False)


def load_backbone_weights(module: nn.Module, name: str, weights: str) -> tuple[list[str], list[str]]:
    """Load ``weights`` into ``module`` non-strictly; log missing/unexpected keys by name and return them.

    The classifier (``fc.*``) is dropped silently; the offset convs of DCN layers are expected to be missing.
    """
    state = {k: v for k, v in _read_state_dict(name, weights).items() if not k.startswith("fc.")}
    result = module.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if ".conv_offset." not in k]
    unexpected = list(result.unexpected_keys)
    if missing:
        log.warning("backbone %s (%s): missing keys, left at random init: %s", name, weights, ", ".join(missing))
    if unexpected:
        log.warning("backbone %s (%s): unexpected keys, ignored: %s", name, weights, ", ".join(unexpected))
    log.info("backbone %s: loaded %d tensors from %s", name, len(state) - len(unexpected), weights)
    return missing, unexpected


class ResNetBackbone(nn.Module):
    """A torchvision ResNet/ResNeXt body returning the outputs of the stages in ``out_stages`` (1 = res2).

    Args:
        name: a key of :data:`BACKBONES`.
        weights: torchvision weights enum name or local ``.pth`` path; None keeps torchvision's random init.
        frozen_stages: -1 none, 0 the stem, k the stem and the first k stages (docs/REPRODUCTION.md §5: 1).
        norm_eval: keep every BatchNorm in eval mode (frozen statistics) even in ``train()``.
        dcn_stages: four flags (res2..res5); the 3x3 conv of every block of a flagged stage becomes DCNv2.
        out_stages: stage numbers 1..4 whose outputs are returned (default C3, C4, C5).
    """

    def __init__(self, name: str = "resnet50", weights: str | None = None, frozen_stages: int = 1,
                 norm_eval: bool = True, dcn_stages: Sequence[bool] = (False, False, False, False),
                 out_stages: Sequence[int] = (2, 3, 4)) -> None:
        super().__init__()
        if name not in BACKBONES:
            raise KeyError(f"model.backbone.name: unknown backbone '{name}'; valid: {', '.join(BACKBONES)}")
        if len(dcn_stages) != 4:
            raise ValueError(f"model.backbone.dcn_stages needs 4 flags (res2..res5), got {list(dcn_stages)}")
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"model.backbone.frozen_stages must be in -1..4, got {frozen_stages}")
        if not out_stages or any(s not in (1, 2, 3, 4) for s in out_stages):
            raise ValueError(f"out_stages must be stage numbers in 1..4, got {list(out_stages)}")
        body = BACKBONES[name](weights=None)
        self.name, self.frozen_stages, self.norm_eval = name, frozen_stages, norm_eval
        self.out_stages = tuple(out_stages)
        self.conv1, self.bn1, self.relu, self.maxpool = body.conv1, body.bn1, body.relu, body.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = body.layer1, body.layer2, body.layer3, body.layer4
        for stage, use_dcn in enumerate(dcn_stages, start=1):
            if use_dcn:
                for block in getattr(self, f"layer{stage}"):
                    if not isinstance(block, torchvision.models.resnet.Bottleneck):
                        raise ValueError(f"model.backbone.dcn_stages: DCN needs bottleneck blocks, {name} has none")
                    block.conv2 = ModulatedDeformConv2d.from_conv(block.conv2)
        last = [self.layer1, self.layer2, self.layer3, self.layer4]
        self.out_channels = [self._stage_channels(last[s - 1]) for s in self.out_stages]
        if weights:
            load_backbone_weights(self, name, weights)
        self._freeze()

    @staticmethod
    def _stage_channels(stage: nn.Sequential) -> int:
        block = stage[-1]
        bn = block.bn3 if hasattr(block, "bn3") else block.bn2
        return bn.num_features

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.conv1, self.bn1] + [getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1)]

    def _freeze(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> ResNetBackbone:
        """Switch mode, keeping frozen stages and (with ``norm_eval``) every BatchNorm in eval mode."""
        super().train(mode)
        if mode:
            for module in self._frozen_modules():
                module.eval()
            if self.norm_eval:
                for m in self.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for stage in range(1, max(self.out_stages) + 1):
            x = getattr(self, f"layer{stage}")(x)
            if stage in self.out_stages:
                outs.append(x)
        return outs
