"""scripts.convert_checkpoint: the release's mmdet names onto the paper configs, torchvision's RetinaNet onto its config.

The mmdet state dicts are written here from the release's module structure (mmdet 2.x ResNet/ResNeXt with
``bn1``/``downsample.1`` BatchNorms and ``num_batches_tracked``, DCNv2 ``conv2.conv_offset``; FPN ``ConvModule``s
``neck.lateral_convs.i.conv`` and ``neck.fpn_convs.i.conv``, P6/P7 being ``fpn_convs.3``/``.4``; the head's
``cls_convs.i.conv``, ``reg_convs.i.conv``, ``retina_cls``, ``retina_reg``), with the release's shapes for the neck
and the head. The torchvision test builds torchvision's model with random weights, converts it and compares the
detections of both on real photos.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from detector.build import build_model
from detector.checkpoint import load_model_weights
from detector.config import load_config
from detector.errors import CheckpointError
from scripts.convert_checkpoint import convert_state_dict, main as convert_main, mmdet_name, torchvision_name

REPO = Path(__file__).resolve().parents[1]
BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def _model(config: str):
    cfg = load_config(REPO / "configs" / f"{config}.yaml", ["model.backbone.weights=null"])
    torch.manual_seed(0)
    return build_model(cfg).eval(), cfg


def _bn(prefix: str) -> list[str]:
    return [f"{prefix}.{p}" for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]


def mmdet_backbone_names(depth: int, dcn_stages: tuple[bool, ...] = (False,) * 4) -> list[str]:
    """mmdet 2.x ResNet/ResNeXt state-dict names (style pytorch; conv2 is ModulatedDeformConv2dPack with DCN)."""
    names = ["backbone.conv1.weight", *_bn("backbone.bn1")]
    for stage, blocks in enumerate(BLOCKS[depth], start=1):
        for b in range(blocks):
            p = f"backbone.layer{stage}.{b}"
            names += [f"{p}.conv1.weight", *_bn(f"{p}.bn1"), f"{p}.conv2.weight", *_bn(f"{p}.bn2"),
                      f"{p}.conv3.weight", *_bn(f"{p}.bn3")]
            if dcn_stages[stage - 1]:
                names += [f"{p}.conv2.conv_offset.weight", f"{p}.conv2.conv_offset.bias"]
            if b == 0:
                names += [f"{p}.downsample.0.weight", *_bn(f"{p}.downsample.1")]
    return names


def mmdet_neck_head_shapes(num_anchors: int, num_classes: int = 80) -> dict[str, tuple[int, ...]]:
    """The release's FPN (in 512/1024/2048, out 256, start_level 1, extra convs on the C5 input) and head shapes."""
    shapes: dict[str, tuple[int, ...]] = {}
    for i, c in enumerate((512, 1024, 2048)):
        shapes[f"neck.lateral_convs.{i}.conv.weight"], shapes[f"neck.lateral_convs.{i}.conv.bias"] = (256, c, 1, 1), (256,)
    for i, c in enumerate((256, 256, 256, 2048, 256)):  # P3-P5 outputs, P6 on C5 ('on_input'), P7
        shapes[f"neck.fpn_convs.{i}.conv.weight"], shapes[f"neck.fpn_convs.{i}.conv.bias"] = (256, c, 3, 3), (256,)
    for branch in ("cls", "reg"):
        for i in range(4):
            shapes[f"bbox_head.{branch}_convs.{i}.conv.weight"] = (256, 256, 3, 3)
            shapes[f"bbox_head.{branch}_convs.{i}.conv.bias"] = (256,)
    for name, out in (("retina_cls", num_anchors * num_classes), ("retina_reg", num_anchors * 4)):
        shapes[f"bbox_head.{name}.weight"], shapes[f"bbox_head.{name}.bias"] = (out, 256, 3, 3), (out,)
    return shapes


def release_state_dict(model: nn.Module, depth: int, dcn_stages: tuple[bool, ...], num_anchors: int
                       ) -> dict[str, torch.Tensor]:
    """A random state dict with the release's names: backbone shapes read from our model by the same name (the
    backbone names are shared), neck and head shapes from the release's architecture."""
    own = model.state_dict()
    g = torch.Generator().manual_seed(1)
    state = {}
    for name in mmdet_backbone_names(depth, dcn_stages):
        assert name in own, f"the model has no backbone tensor named like the release's {name}"
        ref = own[name]
        state[name] = (torch.randint(0, 100, ref.shape, generator=g) if not ref.is_floating_point()
                       else torch.rand(ref.shape, generator=g) + 0.5)  # positive: valid running_var
    for name, shape in mmdet_neck_head_shapes(num_anchors).items():
        state[name] = torch.randn(shape, generator=g)
    return state


MMDET_CASES = [  # config, depth, DCN stages, anchors per location
    ("alrp_retinanet_r50_atss_500", 50, (False,) * 4, 2),
    ("alrp_retinanet_r50_maxiou_500", 50, (False,) * 4, 6),
    ("alrp_retinanet_x101_atss_800", 101, (False,) * 4, 3),
    ("alrp_retinanet_x101_dcn_atss_800", 101, (False, True, True, True), 3),
]


@pytest.fixture(scope="module", params=MMDET_CASES, ids=[c[0] for c in MMDET_CASES])
def mmdet_case(request):
    config, depth, dcn, anchors = request.param
    model, cfg = _model(config)
    return model, cfg, release_state_dict(model, depth, dcn, anchors)


def test_mmdet_release_names_all_mapped(mmdet_case):
    model, cfg, release = mmdet_case
    converted = convert_state_dict(release, model, "mmdet", cfg.model.num_classes)
    own = model.state_dict()
    assert len(converted) == len(release)  # every release tensor used once, nothing added
    assert sorted(converted) == sorted(k for k in own if not k.startswith("criterion."))
    # spot checks of where tensors land (values are random, so a wrong placement cannot match)
    for src, dst in (("neck.lateral_convs.2.conv.weight", "fpn.lateral_convs.2.weight"),
                     ("neck.fpn_convs.1.conv.bias", "fpn.output_convs.1.bias"),
                     ("neck.fpn_convs.3.conv.weight", "fpn.extra_convs.0.weight"),
                     ("neck.fpn_convs.4.conv.weight", "fpn.extra_convs.1.weight"),
                     ("bbox_head.cls_convs.0.conv.weight", "head.cls_convs.0.weight"),
                     ("bbox_head.reg_convs.3.conv.bias", "head.reg_convs.6.bias"),
                     ("bbox_head.retina_cls.weight", "head.cls_out.weight"),
                     ("bbox_head.retina_reg.bias", "head.reg_out.bias"),
                     ("backbone.layer3.0.downsample.1.running_var", "backbone.layer3.0.downsample.1.running_var")):
        assert torch.equal(converted[dst], release[src]), (src, dst)
    if cfg.model.backbone.dcn_stages[1]:
        assert torch.equal(converted["backbone.layer2.0.conv2.conv_offset.weight"],
                           release["backbone.layer2.0.conv2.conv_offset.weight"])
        assert not any("layer1.0.conv2.conv_offset" in k for k in converted)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    assert not unexpected and all(k.startswith("criterion.") for k in missing)


def test_mmdet_refuses_leftovers_and_misfits():
    model, cfg = _model("alrp_retinanet_r50_atss_500")
    release = release_state_dict(model, 50, (False,) * 4, 2)
    extra = {**release, "bbox_head.retina_iou.weight": torch.zeros(2, 256, 3, 3)}
    with pytest.raises(CheckpointError, match=r"1 unmatched source tensor\(s\): bbox_head.retina_iou.weight"):
        convert_state_dict(extra, model, "mmdet", 80)
    fewer = {k: v for k, v in release.items() if k != "neck.fpn_convs.4.conv.bias"}
    with pytest.raises(CheckpointError, match=r"not in the source: fpn.extra_convs.1.bias"):
        convert_state_dict(fewer, model, "mmdet", 80)
    dcn = {**release, "backbone.layer2.0.conv2.conv_offset.weight": torch.zeros(27, 128, 3, 3)}
    with pytest.raises(CheckpointError, match=r"conv_offset.weight \(-> backbone.layer2.0.conv2.conv_offset.weight, "
                                              r"not in the model\)"):
        convert_state_dict(dcn, model, "mmdet", 80)  # a DCN checkpoint onto a config without DCN
    wrong = {**release, "bbox_head.retina_cls.weight": torch.zeros(2 * 20, 256, 3, 3)}
    with pytest.raises(CheckpointError, match=r"shape mismatch.*retina_cls.weight \(40, 256, 3, 3\) -> "
                                              r"head.cls_out.weight \(160, 256, 3, 3\)"):
        convert_state_dict(wrong, model, "mmdet", 80)


def test_mmdet_cli_writes_a_loadable_checkpoint(tmp_path):
    model, _ = _model("alrp_retinanet_r50_atss_500")
    release = release_state_dict(model, 50, (False,) * 4, 2)
    src = tmp_path / "release.pth"
    torch.save({"meta": {"mmdet_version": "2.1.0", "CLASSES": ("person",) * 80, "epoch": 100},
                "state_dict": release, "optimizer": {"state": {}, "param_groups": []}}, src)
    out = tmp_path / "converted.pth"
    assert convert_main(["--from", "mmdet", str(src), "--config", str(REPO / "configs/alrp_retinanet_r50_atss_500.yaml"),
                         "--out", str(out)]) == 0
    fresh, _ = _model("alrp_retinanet_r50_atss_500")
    assert load_model_weights(fresh, out, strict=True) == []
    assert torch.equal(fresh.state_dict()["head.cls_convs.2.weight"], release["bbox_head.cls_convs.1.conv.weight"])
    with pytest.raises(CheckpointError, match="not found"):
        convert_main(["--from", "mmdet", str(tmp_path / "absent.pth"), "--config",
                      str(REPO / "configs/alrp_retinanet_r50_atss_500.yaml"), "--out", str(tmp_path / "nothing.pth")])
    bad = {**release, "bbox_head.retina_cls.weight": torch.zeros(2, 256, 3, 3)}
    torch.save({"state_dict": bad}, src)
    with pytest.raises(CheckpointError, match="nothing written"):
        convert_main(["--from", "mmdet", str(src), "--config", str(REPO / "configs/alrp_retinanet_r50_atss_500.yaml"),
                      "--out", str(tmp_path / "nothing.pth")])
    assert not (tmp_path / "nothing.pth").exists()


def test_name_rules_by_hand():
    assert mmdet_name("neck.fpn_convs.3.conv.weight") == "fpn.extra_convs.0.weight"
    assert mmdet_name("bbox_head.reg_convs.2.conv.weight") == "head.reg_convs.4.weight"
    assert mmdet_name("bbox_head.loss_cls.weight") is None
    assert mmdet_name("backbone.layer3.5.conv2.conv_offset.bias") == "backbone.layer3.5.conv2.conv_offset.bias"
    assert mmdet_name("backbone.layer3.5.conv2_offset.weight") == "backbone.layer3.5.conv2.conv_offset.weight"
    assert torchvision_name("head.classification_head.conv.3.0.weight") == "head.cls_convs.6.weight"  # current
    assert torchvision_name("head.classification_head.conv.6.weight") == "head.cls_convs.6.weight"  # pre-0.13
    assert torchvision_name("backbone.fpn.inner_blocks.1.0.bias") == "fpn.lateral_convs.1.bias"
    assert torchvision_name("backbone.fpn.layer_blocks.2.weight") == "fpn.output_convs.2.weight"
    assert torchvision_name("backbone.fpn.extra_blocks.p7.weight") == "fpn.extra_convs.1.weight"
    assert torchvision_name("backbone.body.layer4.2.bn3.running_var") == "backbone.layer4.2.bn3.running_var"


def test_bn_eps_absorbed_exactly():
    """A BatchNorm with eps 0 (torchvision's COCO_V1) and its converted eps-1e-5 twin give the same output."""
    from scripts.convert_checkpoint import _absorb_bn_eps
    src = nn.BatchNorm2d(4, eps=0.0).eval()
    with torch.no_grad():
        src.running_var.copy_(torch.tensor([1e-6, 1e-4, 0.3, 2.0]))
        src.running_mean.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
        src.weight.copy_(torch.tensor([0.5, 1.5, -1.0, 2.0]))
    dst = nn.BatchNorm2d(4).eval()
    state = {f"bn.{k}": v.clone() for k, v in src.state_dict().items()}
    _absorb_bn_eps(state, {"bn.": dst.eps}, 0.0)
    dst.load_state_dict({k[3:]: v for k, v in state.items()})
    x = torch.randn(2, 4, 3, 3, dtype=torch.float32)
    torch.testing.assert_close(dst(x), src(x), rtol=1e-6, atol=1e-6)
    plain = nn.BatchNorm2d(4).eval()
    plain.load_state_dict(src.state_dict())  # the same tensors without the eps correction differ
    assert (plain(x) - src(x)).abs().max() > 1e-2


# ----------------------------------------------------------------------------------------------------------------
# torchvision's retinanet_resnet50_fpn (COCO_V1 structure) vs the converted model, on real photos
# ----------------------------------------------------------------------------------------------------------------
def _coco_v1_like_torchvision_model(images: list[torch.Tensor]):
    """retinanet_resnet50_fpn with random weights in COCO_V1's structure: FrozenBatchNorm2d with eps 0 whose
    statistics are those of ``images`` (variances floored at 1e-4, so the eps difference matters), random affine
    weights, a head whose scores vary over the image, and the 11 class outputs that are not COCO categories
    (background, N/A) never firing, as in the trained model."""
    from torchvision.models.detection import RetinaNet_ResNet50_FPN_Weights, retinanet_resnet50_fpn
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(0)
    tv = retinanet_resnet50_fpn(weights=None, weights_backbone=None, min_size=192, max_size=320).eval()
    body = tv.backbone.body
    with torch.no_grad():
        for m in body.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
                m.momentum = None  # cumulative average: one batch -> its own statistics
        body.train()
        body(tv.transform(images)[0].tensors)
        body.eval()

    def freeze(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.BatchNorm2d):
                frozen = FrozenBatchNorm2d(child.num_features, eps=0.0)
                for k in ("weight", "bias", "running_mean", "running_var"):
                    getattr(frozen, k).copy_(getattr(child, k))
                frozen.running_var.clamp_(min=1e-4)
                setattr(module, name, frozen)
            else:
                freeze(child)

    with torch.no_grad():
        freeze(body)
        for m in [*tv.head.classification_head.conv.modules(), *tv.head.regression_head.conv.modules()]:
            if isinstance(m, nn.Conv2d):
                m.weight.normal_(0, 0.03)
        # output convs scaled so that, on these images, logits vary with std 1 and deltas with std 0.2
        feats = list(tv.backbone(tv.transform(images)[0].tensors).values())
        cls, reg = tv.head.classification_head, tv.head.regression_head
        cls.cls_logits.bias.zero_()
        cls.cls_logits.weight /= torch.cat([cls.cls_logits(cls.conv(f)).flatten() for f in feats]).std()
        reg.bbox_reg.weight *= 0.2 / torch.cat([reg.bbox_reg(reg.conv(f)).flatten() for f in feats]).std()
        bias = cls.cls_logits.bias.view(9, 91)
        bias.uniform_(-4.0, -2.0)
        categories = RetinaNet_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
        bias[:, [i for i, c in enumerate(categories) if c in ("__background__", "N/A")]] = -30.0
    coco_ids = [i for i, c in enumerate(categories) if c not in ("__background__", "N/A")]
    return tv, coco_ids


def _v1_names(state: dict) -> dict:
    """torchvision's pre-0.13 names (the released COCO_V1 file): conv.i.0 -> conv.(2i), blocks.i.0 -> blocks.i."""
    import re
    out = {}
    for k, v in state.items():
        k = re.sub(r"(head\.\w+_head\.conv)\.(\d+)\.0\.", lambda m: f"{m[1]}.{2 * int(m[2])}.", k)
        k = re.sub(r"(fpn\.(?:inner|layer)_blocks\.\d+)\.0\.", r"\1.", k)
        out[k] = v
    return out


@pytest.mark.slow
def test_torchvision_retinanet_same_detections_on_real_photos(coco_mini_dir, tmp_path):
    """Same detections from torchvision's model and the converted one, given the same preprocessed input.

    Preprocessing differs (torchvision: F.interpolate to floor(h*s) x floor(w*s); this framework's loader: OpenCV
    INTER_LINEAR to round(h*s) x round(w*s)), so both models get torchvision's transformed, padded batch; ours gets
    its image sizes and resize factors as targets. Two photos of different aspect ratios in one batch (padded to
    a common size: 192 x 320, so P6/P7 have torchvision's non-power-of-two y-strides 64 and 96).
    """
    from torchvision.io import read_image

    files = [coco_mini_dir / "images" / n for n in ("000000000790.jpg", "000000005001.jpg")]
    images = [read_image(str(f)).float() / 255 for f in files]
    tv, coco_ids = _coco_v1_like_torchvision_model(images)
    src = tmp_path / "tv.pth"
    torch.save(_v1_names(tv.state_dict()), src)  # a file with the released COCO_V1 file's key names
    out = tmp_path / "converted.pth"
    config = REPO / "configs/torchvision_retinanet_r50_fpn.yaml"
    assert convert_main(["--from", "torchvision", str(src), "--config", str(config), "--out", str(out)]) == 0
    ours, _ = _model("torchvision_retinanet_r50_fpn")
    assert load_model_weights(ours, out, strict=True) == []

    with torch.no_grad():
        want = tv(images)
        batch, _ = tv.transform(images)
        targets = [{"img_size": torch.tensor(s), "scale_factor": torch.tensor([s[1] / im.shape[-1], s[0] / im.shape[-2]])}
                   for s, im in zip(batch.image_sizes, images)]
        got = ours(batch.tensors, targets)
    ids = torch.tensor(coco_ids)
    for w, g in zip(want, got):
        assert len(w["boxes"]) == len(g["boxes"]) == 300  # detections_per_img
        # order-insensitive match: same label, then the nearest box
        g_labels = ids[g["labels"]]
        dist = (w["boxes"][:, None] - g["boxes"][None]).abs().amax(dim=2)
        dist[w["labels"][:, None] != g_labels[None]] = float("inf")
        nearest = dist.argmin(dim=1)
        assert torch.unique(nearest).numel() == len(nearest)  # one-to-one
        assert dist.min(dim=1).values.max() < 2e-2  # pixels of the original photo (measured: 5e-3)
        torch.testing.assert_close(g["scores"][nearest], w["scores"], rtol=0, atol=1e-4)
