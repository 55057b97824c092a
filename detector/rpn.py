"""Region proposal network of Faster R-CNN (docs/REPRODUCTION.md §4.2, §5): head, anchor targets, random
sampling, proposals.

One class-agnostic objectness logit and four deltas per anchor on every pyramid level (P2-P6). Training
targets come from MaxIoU (0.7 / 0.3, low-quality matches down to 0.3, every anchor valid as mmdet 2.x's
``allowed_border=-1``); the baseline keeps a random 256 anchors per image (half positive at most), the
aLRP variant keeps them all. Proposals: per level the ``nms_pre`` best anchors, decoded and clipped to the
image, then NMS within each level (``batched_nms`` keyed by level) and the ``nms_post`` best overall.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from detector.anchors import AnchorGenerator
from detector.assigners import BACKGROUND, max_iou_assign
from detector.box_ops import DeltaXYWHCoder, clip_boxes

__all__ = ["RPNHead", "RPN", "random_sample", "rpn_labels", "generate_proposals"]


class RPNHead(nn.Module):
    """A 3x3 conv + ReLU shared by all levels, then ``A`` objectness logits and ``A*4`` deltas per location.

    Initialised normal(0, 0.01) with zero bias (mmdet ``RPNHead``). Channel ``a`` / ``a*4 + c`` is anchor ``a``,
    matching the anchors' (H, W, A) order after ``permute(0, 2, 3, 1)``.
    """

    def __init__(self, in_channels: int, num_anchors: int, channels: int = 256) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.cls_out = nn.Conv2d(channels, num_anchors, 1)
        self.reg_out = nn.Conv2d(channels, num_anchors * 4, 1)
        for m in (self.conv, self.cls_out, self.reg_out):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)

    def forward(self, feats: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: objectness logits (B, A, H, W) and deltas (B, A*4, H, W)."""
        hidden = [torch.relu(self.conv(f)) for f in feats]
        return [self.cls_out(h) for h in hidden], [self.reg_out(h) for h in hidden]


def _choose(idx: Tensor, k: int) -> Tensor:
    """``k`` entries of ``idx`` uniformly at random without replacement (all of them if there are <= k)."""
    if idx.numel() <= k:
        return idx
    return idx[torch.randperm(idx.numel(), device=idx.device)[:k]]


def random_sample(pos: Tensor, neg: Tensor, num: int, pos_fraction: float) -> tuple[Tensor, Tensor]:
    """mmdet's ``RandomSampler``: indices of at most ``int(num * pos_fraction)`` positives, then negatives up to
    ``num`` samples in all, each drawn uniformly at random from the (N,) boolean masks ``pos`` and ``neg``."""
    pos_idx = _choose(pos.nonzero().squeeze(1), int(num * pos_fraction))
    neg_idx = _choose(neg.nonzero().squeeze(1), num - pos_idx.numel())
    return pos_idx, neg_idx


def rpn_labels(anchors: Tensor, gt_boxes: Tensor, pos_iou: float = 0.7, neg_iou: float = 0.3,
               min_pos_iou: float = 0.3, num_samples: int | None = None, pos_fraction: float = 0.5
               ) -> tuple[Tensor, Tensor]:
    """Objectness targets of one image: (N,) labels 1 object / 0 background / -1 left out, and (N,) the matched
    gt index (0 where not positive). With ``num_samples`` only a random sample of anchors is labelled."""
    assigned = max_iou_assign(anchors, gt_boxes, pos_iou, neg_iou, min_pos_iou, low_quality=True)
    pos, neg = assigned >= 0, assigned == BACKGROUND
    if num_samples is not None:
        pos_idx, neg_idx = random_sample(pos, neg, num_samples, pos_fraction)
        pos = torch.zeros_like(pos).index_fill_(0, pos_idx, True)
        neg = torch.zeros_like(neg).index_fill_(0, neg_idx, True)
    labels = torch.full_like(assigned, -1)
    labels[neg] = 0
    labels[pos] = 1
    return labels, assigned.clamp(min=0)


@torch.no_grad()
def generate_proposals(cls_logits: Sequence[Tensor], box_deltas: Sequence[Tensor], anchors: Sequence[Tensor],
                       coder: DeltaXYWHCoder, image_sizes: Sequence[tuple[int, int]], nms_pre: int = 1000,
                       nms_post: int = 1000, nms_iou: float = 0.7) -> list[tuple[Tensor, Tensor]]:
    """Per image ``(boxes (k, 4), scores (k,))`` proposals, best first, detached from the graph.

    Boxes clipped to zero width or height are dropped (torchvision's RPN does the same; mmdet keeps them).

    Args:
        cls_logits: per level (B, A, H, W); box_deltas: per level (B, A*4, H, W); anchors: per level (H*W*A, 4).
        image_sizes: per image (h, w) to clip to.
    """
    batch = cls_logits[0].shape[0]
    device = cls_logits[0].device
    all_boxes, all_scores, all_levels = [], [], []
    for level, (logits, deltas, level_anchors) in enumerate(zip(cls_logits, box_deltas, anchors)):
        logits = logits.permute(0, 2, 3, 1).reshape(batch, -1).float()  # (B, HWA)
        deltas = deltas.permute(0, 2, 3, 1).reshape(batch, -1, 4).float()  # (B, HWA, 4)
        k = logits.shape[1] if nms_pre <= 0 else min(nms_pre, logits.shape[1])
        top_logits, top = logits.topk(k, dim=1)  # (B, k); ranking logits = ranking sigmoid scores
        deltas = deltas.gather(1, top[..., None].expand(-1, -1, 4))  # (B, k, 4)
        boxes = coder.decode(level_anchors[top].reshape(-1, 4), deltas.reshape(-1, 4)).view(batch, k, 4)
        all_boxes.append(boxes)
        all_scores.append(top_logits.sigmoid())
        all_levels.append(torch.full((k,), level, dtype=torch.long, device=device))
    boxes, scores, levels = torch.cat(all_boxes, 1), torch.cat(all_scores, 1), torch.cat(all_levels)
    out = []
    for b in range(batch):
        img_boxes = clip_boxes(boxes[b], image_sizes[b])  # Python (h, w): no host-to-device copy
        ok = (img_boxes[:, 2] > img_boxes[:, 0]) & (img_boxes[:, 3] > img_boxes[:, 1])
        bx, sc = img_boxes[ok], scores[b][ok]
        keep = batched_nms(bx, sc, levels[ok], nms_iou)[:nms_post]  # sorted by descending score
        out.append((bx[keep], sc[keep]))
    return out


class RPN(nn.Module):
    """The RPN's head, anchors and settings; training targets for the criterion and proposals for the RoI head.

    ``num_samples`` None labels every anchor (aLRP, docs/REPRODUCTION.md §4.2); an int draws that many per image
    (baseline).
    ``train_nms`` / ``test_nms`` are (nms_pre per level, nms_post per image); which applies follows ``training``.
    """

    def __init__(self, head: RPNHead, anchor_generator: AnchorGenerator, coder: DeltaXYWHCoder, *,
                 pos_iou: float = 0.7, neg_iou: float = 0.3, min_pos_iou: float = 0.3, num_samples: int | None = None,
                 pos_fraction: float = 0.5, train_nms: tuple[int, int] = (2000, 1000),
                 test_nms: tuple[int, int] = (1000, 1000), nms_iou: float = 0.7) -> None:
        super().__init__()
        if not 0.0 <= neg_iou <= pos_iou <= 1.0:
            raise ValueError(f"model.rpn: need 0 <= neg_iou <= pos_iou <= 1, got {neg_iou}, {pos_iou}")
        if num_samples is not None and (num_samples < 1 or not 0.0 < pos_fraction <= 1.0):
            raise ValueError(f"model.rpn: need num_samples >= 1 and pos_fraction in (0, 1], got {num_samples}, "
                             f"{pos_fraction}")
        self.head, self.anchor_generator, self.coder = head, anchor_generator, coder
        self.pos_iou, self.neg_iou, self.min_pos_iou = pos_iou, neg_iou, min_pos_iou
        self.num_samples, self.pos_fraction = num_samples, pos_fraction
        self.train_nms, self.test_nms, self.nms_iou = tuple(train_nms), tuple(test_nms), nms_iou

    def forward(self, feats: list[Tensor], image_sizes: Sequence[tuple[int, int]]
                ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[tuple[Tensor, Tensor]]]:
        """Objectness logits, deltas and anchors per level, and each image's proposals (boxes, scores)."""
        cls_logits, box_deltas = self.head(feats)
        anchors = self.anchor_generator.grid_anchors([c.shape[-2:] for c in cls_logits], feats[0].device)
        nms_pre, nms_post = self.train_nms if self.training else self.test_nms
        proposals = generate_proposals(cls_logits, box_deltas, anchors, self.coder, image_sizes, nms_pre, nms_post,
                                       self.nms_iou)
        return cls_logits, box_deltas, anchors, proposals

    def loss_inputs(self, cls_logits: list[Tensor], box_deltas: list[Tensor], anchors: list[Tensor],
                    gt_boxes: list[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Flattened (image, level, y, x, anchor) ``logits (M,)``, ``labels (M,)`` in {1, 0, -1} (float32), and
        the positives' predicted and target deltas (P, 4), rows in ``labels == 1`` order."""
        batch = cls_logits[0].shape[0]
        logits = torch.cat([c.permute(0, 2, 3, 1).reshape(batch, -1) for c in cls_logits], dim=1)  # (B, N)
        deltas = torch.cat([d.permute(0, 2, 3, 1).reshape(batch, -1, 4) for d in box_deltas], dim=1)  # (B, N, 4)
        all_anchors = torch.cat(anchors)  # (N, 4)
        with torch.no_grad():
            labels, matched_boxes = [], []
            for boxes in gt_boxes:
                lab, matched = rpn_labels(all_anchors, boxes, self.pos_iou, self.neg_iou, self.min_pos_iou,
                                          self.num_samples, self.pos_fraction)
                labels.append(lab)
                # no gt: placeholder rows, never read (no positives)
                matched_boxes.append(boxes[matched] if boxes.shape[0] else all_anchors)
            labels_t = torch.stack(labels)  # (B, N)
            pos_b, pos_n = (labels_t == 1).nonzero(as_tuple=True)  # one sync; row-major = labels == 1 order
            targets = self.coder.encode(all_anchors[pos_n], torch.stack(matched_boxes)[pos_b, pos_n])
        return logits.reshape(-1), labels_t.reshape(-1).float(), deltas[pos_b, pos_n], targets
