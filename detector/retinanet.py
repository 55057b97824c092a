"""RetinaNet glue: backbone -> FPN -> head; training targets for the ranking losses; inference.

Training (SPEC §2.1): logits of all levels and images are flattened into one vector of
(image, level, y, x, anchor, class) entries, ``anchor * K + class`` within an image; targets are 1 at
(positive anchor, its class), 0 elsewhere and -1 on every class of an ignored anchor. Rows of the
positive deltas follow ``logits[targets == 1]``. (The release concatenates levels outside images; the
ranking losses depend on the order only through tie-breaking.)
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from detector.anchors import AnchorGenerator
from detector.assigners import IGNORE
from detector.box_ops import DeltaXYWHCoder
from detector.postprocess import postprocess_detections

__all__ = ["RetinaNet"]

Assigner = Callable[[Tensor, Sequence[int], Tensor], Tensor]


def _check_target(boxes: Tensor, labels: Tensor, num_classes: int, image_id: object) -> None:
    """Clear errors for malformed targets (label range checked only for CPU tensors: no device sync)."""
    if boxes.dim() != 2 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:1]:
        raise ValueError(f"image {image_id}: boxes must be (n, 4) with n labels, got {tuple(boxes.shape)} boxes "
                         f"and {tuple(labels.shape)} labels")
    if labels.numel() and labels.device.type == "cpu" and not 0 <= int(labels.min()) <= int(labels.max()) < num_classes:
        raise ValueError(f"image {image_id}: labels must be in 0..{num_classes - 1}, got {labels.tolist()}")


class RetinaNet(nn.Module):
    """A one-stage detector; ``criterion`` maps (logits, targets, pos_pred_deltas, pos_target_deltas) to losses.

    ``forward(images, targets)`` returns the criterion's dict plus ``num_pos`` in training mode, and a list
    of ``{"boxes", "scores", "labels"}`` per image in eval mode (see ``docs/ARCHITECTURE.md``).
    """

    def __init__(self, backbone: nn.Module, fpn: nn.Module, head: nn.Module, anchor_generator: AnchorGenerator,
                 assigner: Assigner, coder: DeltaXYWHCoder, num_classes: int, criterion: nn.Module | None = None,
                 nms_pre: int = 1000, score_thr: float = 0.05, nms_iou: float = 0.5, max_per_img: int = 100) -> None:
        super().__init__()
        self.backbone, self.fpn, self.head = backbone, fpn, head
        self.criterion = criterion
        self.anchor_generator, self.assigner, self.coder = anchor_generator, assigner, coder
        self.num_classes = num_classes
        self.nms_pre, self.score_thr, self.nms_iou, self.max_per_img = nms_pre, score_thr, nms_iou, max_per_img

    def forward(self, images: Tensor, targets: list[dict] | None = None) -> dict[str, Tensor] | list[dict]:
        if images.dim() != 4:
            raise ValueError(f"RetinaNet expects images of shape (B, 3, H, W), got {tuple(images.shape)}")
        cls_logits, box_deltas = self.head(self.fpn(self.backbone(images)))
        anchors = self.anchor_generator.grid_anchors([c.shape[-2:] for c in cls_logits], images.device)
        if self.training:
            if targets is None or len(targets) != images.shape[0]:
                raise ValueError("RetinaNet in training mode needs one target dict per image")
            return self.compute_loss(cls_logits, box_deltas, anchors, targets)
        if targets is not None:
            sizes = [tuple(int(v) for v in t["img_size"]) for t in targets]
            factors = [tuple(float(v) for v in t["scale_factor"]) for t in targets]
        else:
            sizes, factors = [tuple(images.shape[-2:])] * images.shape[0], None
        return postprocess_detections(cls_logits, box_deltas, anchors, self.coder, sizes, factors, self.nms_pre,
                                      self.score_thr, self.nms_iou, self.max_per_img)

    def build_targets(self, all_anchors: Tensor, counts: list[int],
                      targets: list[dict]) -> tuple[Tensor, Tensor, Tensor]:
        """Assign every image to the (N, 4) anchors of all levels (``counts`` per level): (B, N) matched gt index
        or sentinel, (B, N) class, (B, N, 4) matched gt box."""
        matched, classes, boxes = [], [], []
        for i, t in enumerate(targets):
            gt_boxes, gt_labels = t["boxes"], t["labels"]
            _check_target(gt_boxes, gt_labels, self.num_classes, t.get("image_id", i))
            gt_boxes = gt_boxes.to(all_anchors.device, torch.float32, non_blocking=True)
            gt_labels = gt_labels.to(all_anchors.device, torch.long, non_blocking=True)
            idx = self.assigner(all_anchors, counts, gt_boxes)  # (N,)
            matched.append(idx)
            if gt_boxes.shape[0]:
                safe = idx.clamp(min=0)
                classes.append(gt_labels[safe])
                boxes.append(gt_boxes[safe])
            else:
                classes.append(torch.zeros_like(idx))
                boxes.append(all_anchors)  # placeholder rows, never read: no positives
        return torch.stack(matched), torch.stack(classes), torch.stack(boxes)

    def compute_loss(self, cls_logits: list[Tensor], box_deltas: list[Tensor], anchors: list[Tensor],
                     targets: list[dict]) -> dict[str, Tensor]:
        if self.criterion is None:
            raise RuntimeError("RetinaNet has no criterion; build it with detector.build.build_model for training")
        batch, k = cls_logits[0].shape[0], self.num_classes
        logits = torch.cat([c.permute(0, 2, 3, 1).reshape(batch, -1, k) for c in cls_logits], dim=1)  # (B, N, K)
        deltas = torch.cat([d.permute(0, 2, 3, 1).reshape(batch, -1, 4) for d in box_deltas], dim=1)  # (B, N, 4)
        all_anchors = torch.cat(anchors)  # (N, 4)
        with torch.no_grad():
            matched, classes, gt_boxes = self.build_targets(all_anchors, [a.shape[0] for a in anchors], targets)
            pos = matched >= 0  # (B, N)
            flat_targets = logits.new_zeros(logits.shape, dtype=torch.float32)  # (B, N, K)
            flat_targets.scatter_(2, classes[..., None], pos[..., None].to(torch.float32))
            flat_targets.masked_fill_((matched == IGNORE)[..., None], -1.0)
            # one nonzero (one host sync) for every positive gather; row-major = boolean-mask order
            pos_b, pos_n = pos.nonzero(as_tuple=True)
            pos_target_deltas = self.coder.encode(all_anchors[pos_n], gt_boxes[pos_b, pos_n])  # (P, 4)
        pos_pred_deltas = deltas[pos_b, pos_n]  # (P, 4), same order as logits[targets == 1]
        losses = dict(self.criterion(logits.reshape(-1), flat_targets.reshape(-1), pos_pred_deltas,
                                     pos_target_deltas))
        losses.setdefault("num_pos", logits.new_full((), float(pos_n.numel())))
        return losses
