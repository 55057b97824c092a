#!/usr/bin/env python
"""Evaluate a detector on COCO minival, write a test-dev submission, or score an existing results file.

Model mode runs the test pipeline (optionally on several GPUs with torchrun; detections are gathered on rank 0):

    python evaluate.py --config CONFIG --checkpoint CKPT --split minival [--output-dir DIR] [--lrp grid|exact]
    torchrun --nproc_per_node=4 evaluate.py --config CONFIG --checkpoint CKPT --split test-dev

Results-file mode scores a COCO results json without a model:

    python evaluate.py --ann-file instances_val2017.json --results detections.json [--json-out metrics.json]
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from detector.metrics import (ResultsFormatError, evaluate_with_details, load_gt, write_reports,  # noqa: E402
                              write_results, write_zip)
from detector.metrics.reports import format_summary, format_table  # noqa: E402
from detector.metrics.results_io import validate_results  # noqa: E402

SPLITS = {"minival": "val", "test-dev": "test"}

_EPILOG = """\
modes:
  model mode         --config, --checkpoint and --split are required; --ann-file/--results are not allowed.
                     minival: writes detections_minival_<name>_results.json, metrics.json, per_class.txt/.csv and
                     the PNG plots into the output dir and prints the summary and per-class table.
                     test-dev: writes detections_test-dev2017_<name>_results.json and its .zip (upload the zip to
                     the COCO evaluation server); no metrics, test-dev has no public annotations.
  results-file mode  --ann-file and --results are required; scores the file and prints the metrics. With
                     --output-dir the same reports as minival are written there.

metrics (fractions, not percentages): AP, AP50, AP75, AP90, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl
(pycocotools), oLRP, oLRP_loc, oLRP_fp, oLRP_fn (optimal LRP at IoU 0.5, lower is better), rho (the aLRP
paper's rank correlation between score and IoU of the true positives) and per_class {name: AP, oLRP, threshold,
...}. Undefined values are null.

examples:
  python evaluate.py --config configs/alrp_r50_atss_500.yaml --checkpoint checkpoints/alrp_r50_atss_500/last.pth \\
      --split minival --lrp grid
  torchrun --nproc_per_node=4 evaluate.py --config CFG --checkpoint CKPT --split test-dev
  python evaluate.py --ann-file annotations/instances_val2017.json --results dets.json --json-out m.json
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="evaluate.py",
        description="COCO bbox evaluation (AP, optimal LRP, rho) of a checkpoint or of a results file.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = p.add_argument_group("model mode")
    model.add_argument("--config", type=Path, help="experiment YAML config (the one the checkpoint was trained with)")
    model.add_argument("--checkpoint", type=Path, help="checkpoint (.pth) whose model weights are evaluated")
    model.add_argument("--split", choices=tuple(SPLITS), help="minival = val2017 (scored here); test-dev = write the "
                       "submission file for the COCO server")
    model.add_argument("--device", choices=("cpu", "cuda"), default=None,
                       help="device to run the model on (default: the config's runtime.device, 'auto' = cuda if "
                            "available); under torchrun each process uses cuda:LOCAL_RANK")
    model.add_argument("--max-images", type=int, default=None, metavar="N",
                       help="run on the first N images of the split only (quick checks); minival is then scored "
                            "on those N images")
    model.add_argument("overrides", nargs="*", metavar="key=value",
                       help="config overrides as dotted.key=value (values parsed as YAML), e.g. "
                            "model.test.score_thr=0.01 data.test_batch_size=4")
    res = p.add_argument_group("results-file mode")
    res.add_argument("--ann-file", type=Path, help="COCO instances json with the ground truth")
    res.add_argument("--results", type=Path, help="COCO results json: a list of {image_id, category_id, bbox "
                     "[x,y,w,h], score}")
    common = p.add_argument_group("both modes")
    common.add_argument("--lrp", choices=("grid", "exact"), default="grid",
                        help="optimal-LRP threshold search: 'grid' = 0.01 score grid as in the aLRP paper's numbers "
                             "(default); 'exact' = every detection score, as in the newest official LRP code")
    common.add_argument("--output-dir", type=Path, default=None,
                        help="where results and reports go (model mode default: checkpoints/<config name>/"
                             "eval_<split>/; results-file mode: no files unless given)")
    common.add_argument("--json-out", type=Path, default=None,
                        help="also write the metrics as JSON to this file (keys AP, AP50, AP75, AP90, APs, APm, APl, "
                             "oLRP, oLRP_loc, oLRP_fp, oLRP_fn, per_class, ...)")
    return p


def _mode(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    model_given = [f"--{n.replace('_', '-')}" for n in ("config", "checkpoint", "split") if getattr(args, n)]
    res_given = [f"--{n.replace('_', '-')}" for n in ("ann_file", "results") if getattr(args, n)]
    if model_given and res_given:
        parser.error(f"{', '.join(model_given)} (model mode) cannot be combined with {', '.join(res_given)} "
                     f"(results-file mode)")
    if res_given:
        if len(res_given) < 2:
            parser.error("results-file mode needs both --ann-file and --results")
        extra = [o for o, v in (("--device", args.device), ("--max-images", args.max_images)) if v is not None]
        if extra or args.overrides:
            parser.error(f"{', '.join(extra + args.overrides)}: only valid in model mode (--config/--checkpoint)")
        return "results"
    if not model_given:
        parser.error("give either --config, --checkpoint and --split (model mode) or --ann-file and --results "
                     "(results-file mode)")
    missing = [o for o in ("--config", "--checkpoint", "--split") if o not in model_given]
    if missing:
        parser.error(f"model mode needs {', '.join(missing)}")
    if args.max_images is not None and args.max_images < 1:
        parser.error(f"--max-images must be >= 1, got {args.max_images}")
    return "model"


def submission_name(name: str) -> str:
    """The <alg> field of COCO's detections_<split>_<alg>_results.json: '_' separates fields, so it becomes '-'."""
    return re.sub(r"[^A-Za-z0-9-]+", "-", name).strip("-") or "model"


def default_output_dir(cfg_name: str, split: str) -> Path:
    return Path("checkpoints") / cfg_name / f"eval_{split}"


def _write_metrics(metrics: dict, details, args: argparse.Namespace, out_dir: Path | None) -> None:
    if out_dir is not None:
        paths = write_reports(metrics, out_dir, details, echo=True)
        print(f"reports written to {out_dir}: " + ", ".join(p.name for p in paths.values()))
    else:
        print(format_summary(metrics))
        print(format_table(metrics))
    if args.json_out is not None:
        write_results(metrics, args.json_out, indent=2)
        print(f"metrics written to {args.json_out}")


def evaluate_results_file(args: argparse.Namespace) -> dict:
    """Results-file mode: validate and score ``args.results`` against ``args.ann_file``."""
    coco_gt = load_gt(args.ann_file)
    metrics, details = evaluate_with_details(coco_gt, args.results, lrp=args.lrp, progress=True)
    _write_metrics(metrics, details, args, args.output_dir)
    return metrics


def run_model_inference(cfg, checkpoint: str | Path, split: str, device_name: str | None = None,
                        max_images: int | None = None):
    """Build the model and the split's dataset, load ``checkpoint`` and run inference (all ranks).

    Returns (results gathered on rank 0 (empty list elsewhere), dataset). ``split`` is 'minival' or 'test-dev'.
    """
    from data.build import build_dataset, build_test_loader
    from detector.build import build_model
    from detector.checkpoint import CheckpointError, load_model_weights
    from detector.distributed import init_distributed, resolve_device
    from detector.engine import run_inference
    from detector.fuse import fuse_for_inference

    rank, world_size, local_rank = init_distributed(device_name or cfg.runtime.device)
    device = resolve_device(device_name or cfg.runtime.device, local_rank)
    model = build_model(cfg)
    try:
        load_model_weights(model, checkpoint)
    except CheckpointError as e:
        raise ValueError(str(e)) from e
    model = fuse_for_inference(model.eval()).to(device)  # BatchNorm folded into the convolutions
    dataset = build_dataset(cfg.data, SPLITS[split])
    loader = build_test_loader(cfg.data, dataset, world_size, rank, limit=max_images)
    amp = cfg.runtime.amp and device.type == "cuda"  # as in train.py: autocast only on CUDA
    results = run_inference(model, loader, device, dataset.label_to_cat_id, amp=amp)
    return results, dataset


def evaluate_model(args: argparse.Namespace) -> dict | None:
    """Model mode: inference, then (rank 0) the submission files for test-dev or results + metrics for minival."""
    from detector.config import load_config
    from detector.distributed import cleanup, is_main_process

    cfg = load_config(args.config, args.overrides)
    try:
        results, dataset = run_model_inference(cfg, args.checkpoint, args.split, args.device, args.max_images)
        if not is_main_process():
            return None
        out_dir = args.output_dir or default_output_dir(cfg.name, args.split)
        coco = dataset.coco
        img_ids = [int(i) for i in dataset.ids[:args.max_images]] if args.max_images is not None else None
        results = validate_results(results, coco, source="model output", allow_empty=True)
        alg = submission_name(cfg.name)
        if args.split == "test-dev":
            json_path = write_results(results, out_dir / f"detections_test-dev2017_{alg}_results.json")
            zip_path = write_zip(json_path)
            print(f"{len(results)} detections on {len(img_ids or dataset.ids)} test-dev images written to {json_path}\n"
                  f"upload {zip_path} to the COCO detection server (test-dev has no public annotations, so no "
                  f"metrics are computed here)")
            if args.max_images is not None:
                print(f"warning: --max-images {args.max_images} was given; the submission covers only those images")
            return None
        json_path = write_results(results, out_dir / f"detections_minival_{alg}_results.json")
        print(f"{len(results)} detections written to {json_path}")
        names = dict(zip(dataset.label_to_cat_id, dataset.class_names))
        metrics, details = evaluate_with_details(coco, results, lrp=args.lrp, class_names=names, img_ids=img_ids,
                                                 progress=True)
        _write_metrics(metrics, details, args, out_dir)
        return metrics
    finally:
        cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    mode = _mode(parser, args)
    try:
        if mode == "results":
            evaluate_results_file(args)
        else:
            evaluate_model(args)
    except (ResultsFormatError, ValueError, OSError) as e:
        print(f"evaluate.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
