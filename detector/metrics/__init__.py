"""Detection metrics: COCO AP (pycocotools), optimal LRP, the aLRP paper's ρ, reports and results-file I/O.

``write_reports`` (tables and PNG plots) is imported on first use, so importing the metrics does not load
matplotlib.
"""
from __future__ import annotations

from typing import Any

from .coco_eval import EvalDetails, evaluate_detections, evaluate_with_details, run_cocoeval
from .lrp import ClassLRP, ClassMatches, class_lrp, class_matches, optimal_lrp
from .results_io import ResultsFormatError, load_gt, load_results, write_results, write_zip
from .rho import mean_rho, rank_correlation

__all__ = ["EvalDetails", "evaluate_detections", "evaluate_with_details", "run_cocoeval", "ClassLRP", "ClassMatches",
           "class_lrp", "class_matches", "optimal_lrp", "write_reports", "ResultsFormatError", "load_gt",
           "load_results", "write_results", "write_zip", "mean_rho", "rank_correlation"]


def __getattr__(name: str) -> Any:
    if name == "write_reports":  # plotting: matplotlib only when reports are written
        from .reports import write_reports

        return write_reports
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
