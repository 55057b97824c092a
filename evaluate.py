#!/usr/bin/env python
"""Evaluate a detector on a labelled split, write a COCO test-dev submission, or score an existing results file.

Model mode runs the checkpoint through ``detector.inference.Detector`` (the one definition of test-time
preprocessing, shared with predict.py and the exported models), optionally on several GPUs with torchrun
(detections are gathered on rank 0):

    python evaluate.py --checkpoint CKPT --split val [--config CONFIG] [--output-dir DIR] [--lrp grid|exact]
    torchrun --nproc_per_node=4 evaluate.py --checkpoint CKPT --split test-dev

Results-file mode scores a COCO results json without a model:

    python evaluate.py --ann-file instances_val2017.json --results detections.json [--json-out metrics.json]
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from detector.cli import run_cli
from detector.errors import DataError
from detector.metrics import (ResultsFormatError, evaluate_with_details, load_gt, write_reports, write_results,
                              write_zip)
from detector.metrics.reports import format_summary, format_table
from detector.metrics.results_io import validate_results

# split name on the command line -> the config's data split (data.<split>_ann / data.<split>_images)
SPLITS = {"val": "val", "test": "test", "minival": "val", "test-dev": "test"}
# the split's name in results file names (COCO's server wants test-dev2017)
_FILE_SPLIT = {"test-dev": "test-dev2017"}

_EPILOG = """\
modes:
  model mode         --checkpoint and --split are required; --ann-file/--results are not allowed. The checkpoint is
                     a training checkpoint (last.pth, best.pth, epoch_XXX.pth) or a release file written by
                     `python -m scripts.export`; both store their config, so --config is only needed to replace it
                     (or for checkpoints written without one). key=value overrides apply to that config.
                     splits: val and test are the config's data.val_* / data.test_* files; minival (= val) and
                     test-dev (= test) are the COCO names. A split whose annotation file has annotations is scored:
                     detections_<split>_<name>_results.json, metrics.json, per_class.txt/.csv and the PNG plots go
                     into the output dir and the summary and per-class table are printed. A split without
                     annotations (COCO test-dev) gets detections_<split>_<name>_results.json and its .zip (upload
                     the zip to the COCO evaluation server; test-dev is named test-dev2017 there).
  results-file mode  --ann-file and --results are required; scores the file and prints the metrics. With
                     --output-dir the same reports as a scored split are written there.

metrics (fractions, not percentages): AP, AP50, AP75, AP90, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl
(pycocotools), oLRP, oLRP_loc, oLRP_fp, oLRP_fn (optimal LRP at IoU 0.5, lower is better), rho (the aLRP
paper's rank correlation between score and IoU of the true positives) and per_class {name: AP, oLRP, threshold,
...}. Undefined values are null.

exit codes: 0 done, 2 bad command line or config, 3 bad data or results file, 4 bad checkpoint, 5 disk error.

examples:
  python evaluate.py --checkpoint checkpoints/default/last.pth --split val --lrp exact
  python evaluate.py --config configs/alrp_retinanet_r50_atss_500.yaml \\
      --checkpoint checkpoints/alrp_retinanet_r50_atss_500/last.pth --split minival --lrp grid
  torchrun --nproc_per_node=4 evaluate.py --checkpoint CKPT --split test-dev
  python evaluate.py --ann-file annotations/instances_val2017.json --results dets.json --json-out m.json
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="evaluate.py",
        description="COCO bbox evaluation (AP, optimal LRP, rho) of a checkpoint or of a results file.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = p.add_argument_group("model mode")
    model.add_argument("--checkpoint", type=Path, help="training checkpoint or release file (.pth / .safetensors) "
                       "whose model is evaluated")
    model.add_argument("--split", choices=tuple(SPLITS), help="val / test: the config's data.val_* / data.test_* "
                       "files (minival = val, test-dev = test); scored when the split has annotations, else the "
                       "COCO submission files are written")
    model.add_argument("--config", type=Path, help="YAML config replacing the one stored in the checkpoint "
                       "(optional; needed only for checkpoints written without a config)")
    model.add_argument("--device", choices=("cpu", "cuda"), default=None,
                       help="device to run the model on (default: the config's runtime.device, 'auto' = cuda if "
                            "available); under torchrun each process uses cuda:LOCAL_RANK")
    model.add_argument("--max-images", type=int, default=None, metavar="N",
                       help="run on the first N images of the split only (quick checks); a labelled split is then "
                            "scored on those N images")
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
                        help="where results and reports go (model mode default: eval_<split>/ beside the "
                             "checkpoint; results-file mode: no files unless given)")
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
            parser.error(f"{', '.join(extra + args.overrides)}: only valid in model mode (--checkpoint)")
        return "results"
    if not model_given:
        parser.error("give either --checkpoint and --split (model mode) or --ann-file and --results "
                     "(results-file mode)")
    missing = [o for o in ("--checkpoint", "--split") if o not in model_given]
    if missing:
        parser.error(f"model mode needs {', '.join(missing)}")
    if args.max_images is not None and args.max_images < 1:
        parser.error(f"--max-images must be >= 1, got {args.max_images}")
    return "model"


def submission_name(name: str) -> str:
    """The <alg> field of COCO's detections_<split>_<alg>_results.json: '_' separates fields, so it becomes '-'."""
    return re.sub(r"[^A-Za-z0-9-]+", "-", name).strip("-") or "model"


def default_output_dir(checkpoint: str | Path, split: str) -> Path:
    """``eval_<split>/`` beside the checkpoint: the results stay with the run they belong to."""
    return Path(checkpoint).parent / f"eval_{split}"


def results_file_name(split: str, cfg_name: str) -> str:
    """``detections_<split>_<alg>_results.json`` (COCO's naming; test-dev is test-dev2017 there)."""
    return f"detections_{_FILE_SPLIT.get(split, split)}_{submission_name(cfg_name)}_results.json"


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
    try:
        coco_gt = load_gt(args.ann_file)
        metrics, details = evaluate_with_details(coco_gt, args.results, lrp=args.lrp, progress=True)
    except (ResultsFormatError, FileNotFoundError) as e:
        raise DataError(str(e)) from e
    _write_metrics(metrics, details, args, args.output_dir)
    return metrics


def run_model_inference(checkpoint: str | Path, split: str, config: str | Path | None = None,
                        overrides: list[str] | tuple[str, ...] = (), device_name: str | None = None,
                        max_images: int | None = None):
    """Load ``checkpoint`` into a Detector, build the split's dataset and run inference (all ranks).

    Returns (results gathered on every rank, dataset, detector, ids of the images that ran: bad ones skipped with
    ``data.skip_bad_images`` are not among them). ``split`` is a key of SPLITS.
    """
    from data.build import build_dataset
    from detector.distributed import init_distributed, resolve_device
    from detector.inference import load_detector

    detector = load_detector(checkpoint, config, "cpu", fuse=True, overrides=overrides)
    cfg = detector.config
    rank, world_size, local_rank = init_distributed(device_name or cfg.runtime.device)
    device = resolve_device(device_name or cfg.runtime.device, local_rank)
    detector.to(device)
    detector.amp = cfg.runtime.amp and device.type == "cuda"  # as in training: autocast only on CUDA
    try:
        dataset = build_dataset(cfg.data, SPLITS[split])
    except (FileNotFoundError, ValueError) as e:
        raise DataError(f"split {split!r}: {e}") from e
    if list(dataset.label_to_cat_id) != list(detector.category_ids):
        raise DataError(f"{checkpoint} predicts category ids {detector.category_ids[:10]} but the {split} split's "
                        f"annotation file has {dataset.label_to_cat_id[:10]}: evaluate on the dataset it was trained "
                        f"for")
    from detector.engine import run_inference

    results, ran = run_inference(detector, dataset, cfg.data.test_batch_size, cfg.data.num_workers, world_size,
                                 rank, max_images)
    n = min(max_images or len(dataset), len(dataset))
    if len(ran) < n:
        print(f"warning: {n - len(ran)} of {n} images were skipped as bad and are left out of the scores",
              file=sys.stderr)
    return results, dataset, detector, ran


def evaluate_model(args: argparse.Namespace) -> dict | None:
    """Model mode: inference, then (rank 0) results + metrics for a labelled split, submission files otherwise."""
    from detector.distributed import cleanup, is_main_process

    try:
        results, dataset, detector, ran = run_model_inference(args.checkpoint, args.split, args.config, args.overrides,
                                                         args.device, args.max_images)
        if not is_main_process():
            return None
        cfg = detector.config
        out_dir = args.output_dir or default_output_dir(args.checkpoint, args.split)
        coco = dataset.coco
        img_ids = ran if len(ran) < len(dataset) else None
        results = validate_results(results, coco, source="model output", allow_empty=True)
        json_path = write_results(results, out_dir / results_file_name(args.split, cfg.name))
        n_images = len(img_ids or dataset.ids)
        if not coco.anns:  # no public annotations (COCO test-dev): the submission files only
            zip_path = write_zip(json_path)
            print(f"{len(results)} detections on {n_images} {args.split} images written to {json_path}\n"
                  f"the split has no annotations, so no metrics are computed here; for COCO test-dev upload "
                  f"{zip_path} to the COCO detection server")
            if args.max_images is not None:
                print(f"warning: --max-images {args.max_images} was given; the file covers only those images")
            return None
        print(f"{len(results)} detections on {n_images} {args.split} images written to {json_path}")
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
    if mode == "results":
        evaluate_results_file(args)
    else:
        try:
            evaluate_model(args)
        except ResultsFormatError as e:
            raise DataError(str(e)) from e
    return 0


if __name__ == "__main__":
    run_cli(main)
