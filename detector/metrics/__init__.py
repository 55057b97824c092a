"""Detection metrics: COCO AP (pycocotools), optimal LRP, the aLRP paper's ρ, reports and results-file I/O."""
from .coco_eval import EvalDetails, evaluate_detections, evaluate_with_details, run_cocoeval
from .lrp import ClassLRP, ClassMatches, class_lrp, class_matches, optimal_lrp
from .reports import write_reports
from .results_io import ResultsFormatError, load_gt, load_results, write_results, write_zip
from .rho import mean_rho, rank_correlation

__all__ = ["EvalDetails", "evaluate_detections", "evaluate_with_details", "run_cocoeval", "ClassLRP", "ClassMatches",
           "class_lrp", "class_matches", "optimal_lrp", "write_reports", "ResultsFormatError", "load_gt",
           "load_results", "write_results", "write_zip", "mean_rho", "rank_correlation"]
