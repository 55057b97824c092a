"""A pycocotools COCO index over an already loaded dataset dict: shared by the data reader and the metrics, with
no dependency on either (no plotting, nothing from ``detector``)."""
from __future__ import annotations

import contextlib
import io

from pycocotools.coco import COCO

__all__ = ["coco_from_dict"]


def coco_from_dict(data: dict) -> COCO:
    """A pycocotools COCO index over ``data`` (images / annotations / categories), without its progress prints."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco
