"""Test-time decoding of RetinaNet outputs into per-image detections (docs/REPRODUCTION.md §2.6, §8.11).

Per level: keep the ``nms_pre`` anchors with the highest max-class score (ranked on logits, since the
sigmoid is monotonic, so only the kept rows are passed through it), decode, clip to the image. Then over
all levels: (anchor, class) pairs with score > ``score_thr``, class-wise NMS at ``nms_iou``
(``torchvision.ops.batched_nms``), the best ``max_per_img`` per image, optionally divided by the image's
scale factor (original image coordinates). mmdet 2.1 applies NMS to every candidate pair; we run it on a
growing prefix of the best-scored pairs, which gives the same top ``max_per_img`` (see ``_top_after_nms``).

``candidates="pairs"`` selects per level as torchvision's RetinaNet does instead: the (anchor, class) pairs with
score > ``score_thr``, then the best ``nms_pre`` of those pairs (not of the anchors), each pair decoded from its
anchor and clipped; NMS and the final cut are the same.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from detector.box_ops import DeltaXYWHCoder, clip_boxes, rescale_boxes

CANDIDATES = ("anchors", "pairs")

__all__ = ["CANDIDATES", "postprocess_detections", "select_detections"]


def postprocess_detections(cls_logits: Sequence[Tensor], box_deltas: Sequence[Tensor], anchors: Sequence[Tensor],
                           coder: DeltaXYWHCoder, image_sizes: Sequence[tuple[int, int]],
                           scale_factors: Sequence[tuple[float, float]] | None = None, nms_pre: int = 1000,
                           score_thr: float = 0.05, nms_iou: float = 0.5, max_per_img: int = 100,
                           candidates: str = "anchors") -> list[dict[str, Tensor]]:
    """Detections per image: ``{"boxes": (k, 4) xyxy, "scores": (k,), "labels": (k,) int64}``.

    Args:
        cls_logits: per level (B, A*K, H, W); box_deltas: per level (B, A*4, H, W).
        anchors: per level (H*W*A, 4), ordered (H, W, A).
        image_sizes: per image (h, w) to clip boxes to (the image before padding).
        scale_factors: per image (sx, sy); boxes are divided by (sx, sy, sx, sy) after clipping.
        candidates: "anchors" (mmdet 2.1: per level the ``nms_pre`` anchors with the best max-class score) or
            "pairs" (torchvision: per level the ``nms_pre`` best (anchor, class) pairs above ``score_thr``).
    """
    if candidates not in CANDIDATES:
        raise ValueError(f"model.test.candidates must be one of {CANDIDATES}, got '{candidates}'")
    batch, channels, height, width = cls_logits[0].shape
    num_classes = channels // (anchors[0].shape[0] // (height * width))  # channels = A * K
    if candidates == "pairs":
        return _pairs_detections(cls_logits, box_deltas, anchors, coder, image_sizes, scale_factors, nms_pre,
                                 score_thr, nms_iou, max_per_img, num_classes)
    all_boxes, all_scores = [], []
    for logits, deltas, level_anchors in zip(cls_logits, box_deltas, anchors):
        logits = logits.permute(0, 2, 3, 1).reshape(batch, -1, num_classes).float()  # (B, HWA, K)
        deltas = deltas.permute(0, 2, 3, 1).reshape(batch, -1, 4).float()  # (B, HWA, 4)
        level_anchors = level_anchors.expand(batch, -1, -1)  # (B, HWA, 4)
        if 0 < nms_pre < logits.shape[1]:
            top = logits.amax(dim=2).topk(nms_pre, dim=1).indices  # (B, k)
            logits = logits.gather(1, top[..., None].expand(-1, -1, num_classes))
            deltas = deltas.gather(1, top[..., None].expand(-1, -1, 4))
            level_anchors = level_anchors.gather(1, top[..., None].expand(-1, -1, 4))
        boxes = coder.decode(level_anchors.reshape(-1, 4), deltas.reshape(-1, 4)).view(batch, -1, 4)
        all_boxes.append(boxes)
        all_scores.append(logits.sigmoid())
    boxes = torch.cat(all_boxes, dim=1)  # (B, n, 4)
    scores = torch.cat(all_scores, dim=1)  # (B, n, K)
    results = []
    for b in range(batch):
        row, label = (scores[b] > score_thr).nonzero(as_tuple=True)
        results.append(select_detections(clip_boxes(boxes[b, row], image_sizes[b]), scores[b, row, label], label,
                                         nms_iou, max_per_img, None if scale_factors is None else scale_factors[b]))
    return results


def _pairs_detections(cls_logits: Sequence[Tensor], box_deltas: Sequence[Tensor], anchors: Sequence[Tensor],
                      coder: DeltaXYWHCoder, image_sizes: Sequence[tuple[int, int]],
                      scale_factors: Sequence[tuple[float, float]] | None, nms_pre: int, score_thr: float,
                      nms_iou: float, max_per_img: int, num_classes: int) -> list[dict[str, Tensor]]:
    """torchvision's per-level candidates: pairs with score > ``score_thr``, the best ``nms_pre`` of them."""
    batch = cls_logits[0].shape[0]
    per_image: list[list[tuple[Tensor, Tensor, Tensor]]] = [[] for _ in range(batch)]
    for logits, deltas, level_anchors in zip(cls_logits, box_deltas, anchors):
        scores = logits.permute(0, 2, 3, 1).reshape(batch, -1).float().sigmoid()  # (B, HWA*K), pair = anchor*K+k
        deltas = deltas.permute(0, 2, 3, 1).reshape(batch, -1, 4).float()  # (B, HWA, 4)
        for b in range(batch):
            pair = (scores[b] > score_thr).nonzero().squeeze(1)
            level_scores = scores[b, pair]
            if 0 < nms_pre < pair.numel():
                level_scores, top = level_scores.topk(nms_pre)
                pair = pair[top]
            anchor = torch.div(pair, num_classes, rounding_mode="floor")
            boxes = clip_boxes(coder.decode(level_anchors[anchor], deltas[b, anchor]), image_sizes[b])
            per_image[b].append((boxes, level_scores, pair % num_classes))
    results = []
    for b, parts in enumerate(per_image):
        boxes, scores, labels = (torch.cat(t) for t in zip(*parts))
        results.append(select_detections(boxes, scores, labels, nms_iou, max_per_img,
                                         None if scale_factors is None else scale_factors[b]))
    return results


def select_detections(boxes: Tensor, scores: Tensor, labels: Tensor, nms_iou: float, max_per_img: int,
                      scale_factor: tuple[float, float] | None = None) -> dict[str, Tensor]:
    """One image's final detections from its (n, 4) candidate boxes (already clipped), scores and labels:
    class-wise NMS, the best ``max_per_img``, boxes divided by ``scale_factor`` = (sx, sy) if given."""
    keep = _top_after_nms(boxes, scores, labels, nms_iou, max_per_img)
    out_boxes = boxes[keep]
    if scale_factor is not None:
        out_boxes = rescale_boxes(out_boxes, float(scale_factor[0]), float(scale_factor[1]))
    return {"boxes": out_boxes, "scores": scores[keep], "labels": labels[keep]}


def _top_after_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou: float, max_keep: int) -> Tensor:
    """Indices of the ``max_keep`` best boxes surviving class-wise NMS, by descending score (all if <= 0).

    Greedy NMS decides a box only from higher-scoring boxes, so the first ``max_keep`` survivors among the
    top-m candidates are the first ``max_keep`` survivors overall: NMS runs on a growing top-m prefix
    and stops as soon as it yields enough, which keeps dense (e.g. untrained) score maps cheap.
    """
    n = scores.numel()
    if max_keep <= 0:
        return batched_nms(boxes, scores, labels, iou)
    m = min(n, 8 * max_keep)
    while True:
        top = scores.topk(m).indices  # sorted, descending
        keep = batched_nms(boxes[top], scores[top], labels[top], iou)
        if keep.numel() >= max_keep or m == n:
            return top[keep[:max_keep]]
        m = min(n, 4 * m)
