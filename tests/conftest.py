"""Shared test fixtures: paths to the real datasets and reference cases beside the repo."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ALRP_SHARED_DIR", REPO.parent / "shared"))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared datasets/reference folder beside the repo is needed)")
    return path


@pytest.fixture
def shared_dir() -> Path:
    return _need(SHARED)


@pytest.fixture
def reference_dir() -> Path:
    return _need(SHARED / "reference")


@pytest.fixture
def bccd_dir() -> Path:
    return _need(SHARED / "datasets" / "bccd")


@pytest.fixture
def coco_mini_dir() -> Path:
    return _need(SHARED / "datasets" / "coco2017_ccby_mini")
