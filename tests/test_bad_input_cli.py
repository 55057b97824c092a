"""Bad input never costs a run: every case goes through ``train.py`` / ``evaluate.py`` as a subprocess.

One row per case. Each row builds its own tiny COCO-format dataset (generated 64x64 JPEG/PNG images, 2 classes),
breaks it (or the config, a checkpoint, the disk) the way a user would, runs the command, and asserts:

* the exit code of its kind (2 config/CLI, 3 data, 4 checkpoint, 5 I/O, 6 non-finite loss; 0 in skip mode);
* exactly one ``error:`` line on stderr, naming the culprit (file, image id, key), and no traceback there;
* for train runs that got as far as opening the run directory: the traceback in ``log.txt``;
* for config errors: nothing written at all (they fail before any dataset or model is built);
* no half-written output: no temp files, every ``.pth`` loads and verifies, every json parses;
* in skip mode: a finished run whose ``log.txt`` counts the skipped images.

The rows run as parallel subprocesses (one torch thread each) in a module fixture; the ones a test session
selects are run, the base run (a finished tiny training whose checkpoints the checkpoint rows corrupt) only when
one of them needs it.
"""
from __future__ import annotations

import io
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from detector.errors import EXIT_CHECKPOINT, EXIT_CONFIG, EXIT_DATA, EXIT_IO, EXIT_NON_FINITE, EXIT_OK

REPO = Path(__file__).resolve().parents[1]
CATEGORIES = [{"id": 1, "name": "red"}, {"id": 2, "name": "blue"}]
TRAIN_IDS = list(range(1, 7))  # train0.jpg .. train5.jpg
VAL_IDS = list(range(101, 105))  # val0.png .. val3.png


# ---------------------------------------------------------------------------------------------- the data
def _image(seed: int, cat: int) -> tuple[Image.Image, list[float]]:
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(60, 200, (64, 64, 3), dtype=np.uint8))
    x, y = (int(v) for v in rng.integers(4, 30, 2))
    ImageDraw.Draw(im).rectangle([x, y, x + 24, y + 20], fill=(255, 0, 0) if cat == 1 else (0, 0, 255))
    return im, [float(x), float(y), 25.0, 21.0]


def make_dataset(root: Path) -> None:
    """train.json (6 JPEGs) and val.json (4 PNGs) in ``root``, images in ``root/images``."""
    (root / "images").mkdir(parents=True)
    for split, ids, ext in (("train", TRAIN_IDS, "jpg"), ("val", VAL_IDS, "png")):
        images, anns = [], []
        for i, iid in enumerate(ids):
            cat = 1 + i % 2
            im, box = _image(iid, cat)
            name = f"{split}{i}.{ext}"
            im.save(root / "images" / name, **({"quality": 90} if ext == "jpg" else {}))
            images.append({"id": iid, "file_name": name, "width": 64, "height": 64})
            anns.append({"id": 10 * iid, "image_id": iid, "category_id": cat, "bbox": box, "area": box[2] * box[3],
                         "iscrowd": 0})
        (root / f"{split}.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                        "categories": CATEGORIES}))


def edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    raw = json.loads(path.read_text())
    edit(raw)
    path.write_text(json.dumps(raw))


def truncate(path: Path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])


def tiny(ds: Path, *extra: str) -> list[str]:
    """train.py arguments: a tiny RetinaNet on ``ds``, 2 iterations, evaluation at the end."""
    return ["--config", str(REPO / "configs" / "default.yaml"),
            "model.num_classes=2", "model.backbone.name=resnet18", "model.fpn.out_channels=8",
            "model.head.num_convs=1", "model.head.channels=8",
            "data.dataset=coco", f"data.root={ds}", "data.train_ann=train.json", "data.train_images=images",
            "data.val_ann=val.json", "data.val_images=images", "data.train_size=64", "data.test_short=64",
            "data.test_max=64", "data.batch_size=2", "data.test_batch_size=2", "data.num_workers=0",
            "data.min_size=4", "solver.max_iters=2", "solver.warmup_iters=1", "solver.reference_batch=2",
            "runtime.log_interval=1", "runtime.eval_interval=1", "runtime.device=cpu", *extra]


# ---------------------------------------------------------------------------------------------- rows
@dataclass
class Case:
    """Where a row runs: its own dataset copy, its output dir, the shared base run (if built)."""
    dir: Path
    base: Path | None

    @property
    def ds(self) -> Path:
        return self.dir / "ds"

    @property
    def out(self) -> Path:
        return self.dir / "out"

    def train(self, *extra: str) -> list[str]:
        return ["train.py", "--output-dir", str(self.out), *tiny(self.ds, *extra)]


@dataclass(frozen=True)
class Row:
    id: str
    code: int
    culprit: tuple[str, ...]  # regexes the one error line must match
    setup: Callable[[Case], list[str]]  # breaks the case; returns the command (script and arguments)
    early: bool = False  # a config/CLI error: nothing may be written but the message
    skipped: str | None = None  # skip mode: regex of the skipped count that log.txt must hold (the run finishes)
    needs_base: bool = False
    rlimit_fsize: int | None = None  # bytes: a "full disk" for this process
    check: Callable[[Case, str], None] | None = None  # extra assertions (case, error line)
    xfail: str | None = None


def _train_only(case: Case, *extra: str) -> list[str]:
    return case.train(*extra)


def _with_json(split: str, edit: Callable[[dict], None], *extra: str) -> Callable[[Case], list[str]]:
    def setup(case: Case) -> list[str]:
        edit_json(case.ds / f"{split}.json", edit)
        return case.train(*extra)
    return setup


def _with_file(name: str, change: Callable[[Path], None], *extra: str) -> Callable[[Case], list[str]]:
    def setup(case: Case) -> list[str]:
        change(case.ds / "images" / name)
        return case.train(*extra)
    return setup


def _override(*extra: str) -> Callable[[Case], list[str]]:
    return lambda case: case.train(*extra)


def _set_bbox(value) -> Callable[[dict], None]:
    def edit(raw: dict) -> None:
        raw["annotations"][1]["bbox"] = value
    return edit


def _dup_ann_id(raw: dict) -> None:
    raw["annotations"][2]["id"] = raw["annotations"][0]["id"]


def _ann_id_zero(raw: dict) -> None:
    raw["annotations"][1]["id"] = 0


def _base_missing(case: Case) -> list[str]:
    cfg = case.dir / "child.yaml"
    cfg.write_text("_base_: ../no_such_base.yaml\nsolver: {base_lr: 0.01}\n")
    args = case.train()
    args[args.index("--config") + 1] = str(cfg)
    return args


def _missing_config(case: Case) -> list[str]:
    args = case.train()
    args[args.index("--config") + 1] = str(case.dir / "nope.yaml")
    return args


def _rerun_into_existing(case: Case) -> list[str]:
    case.out.mkdir(parents=True)
    for name in ("config.yaml", "log.txt", "metrics.jsonl", "last.pth"):
        os.link(case.base / name, case.out / name)
    return case.train()


def _unchanged_run(case: Case, _line: str) -> None:
    for name in ("config.yaml", "log.txt", "metrics.jsonl", "last.pth"):
        assert os.path.samefile(case.out / name, case.base / name), f"{name} was replaced"
    assert (case.out / "log.txt").read_bytes() == (case.base / "log.txt").read_bytes()


def _tensor_offset(path: Path, entry: int = 0) -> int:
    """Byte offset of the data of the ``entry``-th largest tensor stored in a torch.save zip file."""
    with zipfile.ZipFile(path) as zf:
        infos = sorted((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: -i.file_size)
        info = infos[entry]
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    name_len, extra_len = int.from_bytes(header[26:28], "little"), int.from_bytes(header[28:30], "little")
    return info.header_offset + 30 + name_len + extra_len


def _corrupt_copy(src: Path, dst: Path, payload: bytes, at: int = 1000) -> Path:
    """A copy of checkpoint ``src`` with ``payload`` written over tensor bytes (size unchanged, zip still valid)."""
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        f.seek(_tensor_offset(dst) + at)
        f.write(payload)
    return dst


def _resume_corrupted(payload: bytes) -> Callable[[Case], list[str]]:
    def setup(case: Case) -> list[str]:
        bad = _corrupt_copy(case.base / "last.pth", case.dir / "last_corrupt.pth", payload)
        return case.train("--resume", str(bad))
    return setup


def _resume_truncated(case: Case) -> list[str]:
    bad = case.dir / "half.pth"
    bad.write_bytes((case.base / "last.pth").read_bytes()[: (case.base / "last.pth").stat().st_size // 2])
    return case.train("--resume", str(bad))


def _weights_corrupted(case: Case) -> list[str]:
    bad = _corrupt_copy(case.base / "best.pth", case.dir / "best_corrupt.pth", b"\xff\x00\x13\x37" * 4)
    return case.train(f"model.weights={bad}")


def _evaluate_corrupted_checkpoint(case: Case) -> list[str]:
    bad = _corrupt_copy(case.base / "best.pth", case.dir / "best_corrupt.pth", b"\x7f\x7f\xff\xff")  # 3.4e38
    return ["evaluate.py", "--checkpoint", str(bad), "--split", "val", "--config", str(case.base / "config.yaml"),
            "--output-dir", str(case.out), "--json-out", str(case.out / "metrics.json"), f"data.root={case.ds}"]


def _gt_and_results(edit: Callable[[dict], None] | None, results: str | None = None) -> Callable[[Case], list[str]]:
    """evaluate.py results-file mode on val.json (edited) and a results file (the ground truth, or ``results``)."""
    def setup(case: Case) -> list[str]:
        gt = json.loads((case.ds / "val.json").read_text())
        dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
                for a in gt["annotations"]]
        (case.dir / "dets.json").write_text(results if results is not None else json.dumps(dets))
        if edit is not None:
            edit_json(case.ds / "val.json", edit)
        return ["evaluate.py", "--ann-file", str(case.ds / "val.json"), "--results", str(case.dir / "dets.json"),
                "--json-out", str(case.out / "metrics.json")]
    return setup


def _nan_dump_matches(case: Case, line: str) -> None:
    from detector.checkpoint import safe_load
    import torch

    failing = int(re.search(r"non-finite loss at iteration (\d+)", line).group(1))
    dump = safe_load(case.out / "nan_dump.pth", verify=False)
    assert dump["global_iter"] == failing
    stats = [v for k, v in dump["model"].items() if "running_" in k]
    assert stats and all(bool(torch.isfinite(v).all()) for v in stats)  # the state before the failing step


def _eval_only_no_weights(case: Case) -> list[str]:
    return case.train("--eval-only")


def _skip_all_kinds(case: Case) -> list[str]:
    """Skip mode with a bit of everything: a missing, an empty and a truncated file, a NaN box, a truncated val PNG."""
    (case.ds / "images" / "train0.jpg").unlink()
    (case.ds / "images" / "train1.jpg").write_bytes(b"")
    truncate(case.ds / "images" / "train2.jpg", 0.5)
    edit_json(case.ds / "train.json", lambda raw: raw["annotations"][3].update(bbox=[1, 2, float("nan"), 4]))
    truncate(case.ds / "images" / "val1.png", 0.5)
    return case.train("data.skip_bad_images=true", "data.batch_size=1", "data.test_batch_size=1")


def _skip_val_batch_all_bad(case: Case) -> list[str]:
    truncate(case.ds / "images" / "val2.png", 0.9)
    (case.ds / "images" / "val3.png").write_bytes(b"not an image")
    return case.train("data.skip_bad_images=true")


def _skip_duplicate_ann_ids(case: Case) -> list[str]:
    edit_json(case.ds / "val.json", _dup_ann_id)
    return case.train("data.skip_bad_images=true")


CONFIG_ROWS = [
    Row("unknown_key", EXIT_CONFIG, (r"solver\.lr_stepz", r"solver\.lr_steps"), _override("solver.lr_stepz=[1]")),
    Row("wrong_type", EXIT_CONFIG, (r"'data\.batch_size'", r"integer"), _override("data.batch_size=two")),
    Row("missing_config", EXIT_CONFIG, (r"nope\.yaml",), _missing_config),
    Row("base_points_nowhere", EXIT_CONFIG, (r"child\.yaml", r"no_such_base\.yaml"), _base_missing),
    Row("checkpoint_interval_0", EXIT_CONFIG, (r"'runtime\.checkpoint_interval' must be >= 1, got 0",),
        _override("runtime.checkpoint_interval=0")),
    Row("log_interval_0", EXIT_CONFIG, (r"'runtime\.log_interval' must be >= 1, got 0",),
        _override("runtime.log_interval=0")),
    Row("negative_batch_size", EXIT_CONFIG, (r"'data\.batch_size' must be >= 1, got -2",),
        _override("data.batch_size=-2")),
    Row("negative_test_batch_size", EXIT_CONFIG, (r"'data\.test_batch_size' must be >= 1",),
        _override("data.test_batch_size=0")),
    Row("negative_lr", EXIT_CONFIG, (r"'solver\.base_lr' must be > 0, got -0\.01",), _override("solver.base_lr=-0.01")),
    Row("unknown_loss", EXIT_CONFIG, (r"'loss\.type'", r"alpr", r"Did you mean 'alrp'"), _override("loss.type=alpr")),
    Row("unknown_backbone", EXIT_CONFIG, (r"'model\.backbone\.name'", r"Did you mean 'resnet50'"),
        _override("model.backbone.name=resnet05")),
    Row("unknown_assigner", EXIT_CONFIG, (r"'model\.assigner\.type'", r"Did you mean 'atss'"),
        _override("model.assigner.type=atts")),
    Row("unknown_model", EXIT_CONFIG, (r"'model\.type'", r"Did you mean 'retinanet'"),
        _override("model.type=retinanett")),
    Row("unknown_rank_scope", EXIT_CONFIG, (r"'loss\.rank_scope'", r"device, global"),
        _override("loss.rank_scope=gobal")),
    Row("unknown_device", EXIT_CONFIG, (r"'runtime\.device'", r"auto, cpu, cuda"), _override("runtime.device=gpu")),
    Row("unknown_dataset", EXIT_CONFIG, (r"'data\.dataset'", r"Did you mean 'coco'"), _override("data.dataset=cocoo")),
    Row("loss_model_mismatch", EXIT_CONFIG, (r"'loss\.type'", r"for model\.type retinanet", r"'ce'"),
        _override("loss.type=ce")),
    Row("probability_out_of_range", EXIT_CONFIG, (r"'data\.aug\.flip_prob' must be in \[0, 1\], got 1\.5",),
        _override("data.aug.flip_prob=1.5")),
    Row("empty_lr_steps", EXIT_CONFIG, (r"'solver\.lr_steps' must not be empty",), _override("solver.lr_steps=[]")),
    # an lr step past the end never applies and harms nothing: the run goes on and the log says which key to change
    Row("lr_steps_outside_schedule", EXIT_OK, (), _override("solver.epochs=3", "solver.lr_steps=[1, 5]"),
        skipped=r"WARNING train: schedule: lr steps at iterations .* \(solver\.lr_steps\) are at or after the end"),
    Row("test_max_below_test_short", EXIT_CONFIG, (r"'data\.test_max' \(32\) must be >= 'data\.test_short' \(64\)",),
        _override("data.test_max=32")),
    Row("negative_keep_last", EXIT_CONFIG, (r"'runtime\.keep_last' must be >= 0",), _override("runtime.keep_last=-1")),
    Row("weights_path_missing", EXIT_CONFIG, (r"'model\.weights': file not found: /no/such/weights\.pth",),
        _override("model.weights=/no/such/weights.pth")),
    Row("eval_only_without_weights", EXIT_CONFIG, (r"--eval-only needs weights",), _eval_only_no_weights),
]
for _r in CONFIG_ROWS:
    object.__setattr__(_r, "early", True)

DATA_ROWS = [
    Row("zero_byte_image", EXIT_DATA, (r"image 3: .*train2\.jpg: empty file", r"train\.json"),
        _with_file("train2.jpg", lambda p: p.write_bytes(b""))),
    Row("non_image_file", EXIT_DATA, (r"image 2: .*train1\.jpg: cannot be decoded", r"train\.json"),
        _with_file("train1.jpg", lambda p: p.write_bytes(b"<html>not an image</html>" * 20), "solver.max_iters=3")),
    Row("missing_image_file", EXIT_DATA, (r"image 4: .*train3\.jpg: file missing", r"train\.json"),
        _with_file("train3.jpg", lambda p: p.unlink())),
    Row("image_size_differs", EXIT_DATA, (r"image 5: .*train4\.jpg is 32x32 but .*train\.json says 64x64",),
        _with_file("train4.jpg", lambda p: Image.new("RGB", (32, 32)).save(p, format="JPEG"))),
    Row("nan_bbox", EXIT_DATA, (r"train\.json: annotation 20 of image 2 \(train1\.jpg\): 'bbox' must be 4 finite",),
        _with_json("train", _set_bbox([1, 2, float("nan"), 4]))),
    Row("string_bbox", EXIT_DATA, (r"train\.json: annotation 20 of image 2 .*'bbox' must be 4 finite",),
        _with_json("train", _set_bbox("1,2,3,4"))),
    Row("undeclared_category", EXIT_DATA, (r"train\.json: annotation 30 of image 3 .*category_id 7 is not in",),
        _with_json("train", lambda raw: raw["annotations"][2].update(category_id=7))),
    Row("duplicate_image_id", EXIT_DATA, (r"train\.json: duplicate image id 1 ",),
        _with_json("train", lambda raw: raw["images"][1].update(id=1))),
    Row("bad_json", EXIT_DATA, (r"val\.json: not valid JSON",),
        lambda case: ((case.ds / "val.json").write_text('{"images": [1, 2'), case.train())[1]),
    Row("missing_annotation_file", EXIT_DATA, (r"data\.val_ann: annotation file not found: .*nothere\.json",),
        _override("data.val_ann=nothere.json")),
    Row("duplicate_annotation_id_val", EXIT_DATA, (r"val\.json: annotation 1010 of image 101 .*used 2 times",),
        _with_json("val", _dup_ann_id)),
    Row("annotation_id_0_val", EXIT_DATA, (r"val\.json: annotation 0 of image 102 .*integers >= 1",),
        _with_json("val", _ann_id_zero)),
    Row("num_classes_vs_categories", EXIT_CONFIG, (r"model\.num_classes is 5 but .*declares 2 categories",),
        _override("model.num_classes=5")),
] + [
    Row(f"truncated_jpeg_{int(f * 100)}", EXIT_DATA, (rf"image 2: .*train1\.jpg: truncated JPEG", r"train\.json"),
        _with_file("train1.jpg", lambda p, f=f: truncate(p, f), "solver.max_iters=3"))  # one epoch: all images
    for f in (0.1, 0.5, 0.9)
] + [
    Row(f"truncated_png_val_{int(f * 100)}", EXIT_DATA, (rf"image 103: .*val2\.png: truncated PNG", r"val\.json"),
        _with_file("val2.png", lambda p, f=f: truncate(p, f)))
    for f in (0.1, 0.5, 0.9)
]

CHECKPOINT_ROWS = [
    Row("resume_corrupted_bytes", EXIT_CHECKPOINT, (r"last_corrupt\.pth", r"corrupted"),
        _resume_corrupted(b"\xde\xad\xbe\xef" * 4), needs_base=True),
    Row("resume_weight_3.4e38", EXIT_CHECKPOINT, (r"last_corrupt\.pth", r"corrupted"),
        _resume_corrupted(b"\xff\xff\x7f\x7f"), needs_base=True),  # little-endian float32 max = 3.4e38
    Row("resume_truncated_checkpoint", EXIT_CHECKPOINT, (r"half\.pth", r"truncated, corrupted or not a checkpoint"),
        _resume_truncated, needs_base=True),
    Row("resume_missing_checkpoint", EXIT_CHECKPOINT, (r"checkpoint not found: .*gone\.pth",),
        lambda case: case.train("--resume", str(case.dir / "gone.pth"))),
    Row("weights_corrupted", EXIT_CHECKPOINT, (r"best_corrupt\.pth", r"corrupted"), _weights_corrupted,
        needs_base=True),
    Row("rerun_without_resume", EXIT_CONFIG, (r"already holds a run", r"--resume", r"--overwrite"),
        _rerun_into_existing, needs_base=True, check=_unchanged_run),
]

OTHER_ROWS = [
    Row("disk_full", EXIT_IO, (r"cannot write .*\.pth: disk full",), _train_only, rlimit_fsize=2_000_000),
    Row("non_finite_loss", EXIT_NON_FINITE, (r"non-finite loss at iteration \d+", r"nan_dump\.pth"),
        _override("solver.max_iters=20", "solver.base_lr=1e12", "solver.warmup_iters=0", "loss.type=focal",
                  "loss.reg=smooth_l1", "runtime.eval_interval=0"), check=_nan_dump_matches),
]

EVALUATE_ROWS = [
    Row("evaluate_duplicate_annotation_id", EXIT_DATA, (r"val\.json", r"annotation 1010 of image 101 .*used 2 times"),
        _gt_and_results(_dup_ann_id)),
    Row("evaluate_annotation_id_0", EXIT_DATA, (r"val\.json", r"annotation 0 of image 102 .*integers >= 1"),
        _gt_and_results(_ann_id_zero)),
    Row("evaluate_malformed_results", EXIT_DATA, (r"dets\.json", r"not valid JSON"),
        _gt_and_results(None, results='[{"image_id": 101, ')),
    Row("evaluate_string_score", EXIT_DATA, (r"dets\.json", r"detection #0", r"'score'"),
        _gt_and_results(None, results=json.dumps([{"image_id": 101, "category_id": 1, "bbox": [1, 2, 3, 4],
                                                    "score": "high"}]))),
    Row("evaluate_corrupted_checkpoint", EXIT_CHECKPOINT, (r"best_corrupt\.pth", r"corrupted"),
        _evaluate_corrupted_checkpoint, needs_base=True),
]

SKIP_ROWS = [
    Row("skip_every_kind", EXIT_OK, (), _skip_all_kinds,
        skipped=r"3 images skipped as bad when the dataset was built.*[\s\S]*skipped bad image \(1 so far"),
    Row("skip_eval_batch_all_bad", EXIT_OK, (), _skip_val_batch_all_bad,
        skipped=r"skipped bad image \(2 so far[\s\S]*iteration 2\): AP \d"),  # the batch of 2 bad ones: evaluated
    Row("skip_duplicate_annotation_id_val", EXIT_OK, (), _skip_duplicate_ann_ids,
        skipped=r"val\.json: 2 problems: 2 images skipped[\s\S]*2 images skipped as bad when the dataset was built"),
]

ROWS = CONFIG_ROWS + DATA_ROWS + CHECKPOINT_ROWS + OTHER_ROWS + EVALUATE_ROWS + SKIP_ROWS


# ---------------------------------------------------------------------------------------------- running
@dataclass
class Result:
    case: Case
    cmd: list[str]
    code: int
    stdout: str
    stderr: str


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LOG_LEVEL",)}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1", PYTHONWARNINGS="ignore")
    return env


def _run(cmd: list[str], rlimit_fsize: int | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (rlimit_fsize, rlimit_fsize))
    return subprocess.run([sys.executable, *cmd], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit if rlimit_fsize else None)


def _run_row(row: Row, root: Path, base: Path | None) -> Result:
    case = Case(root / row.id, base)
    make_dataset(case.ds)
    cmd = row.setup(case)
    p = _run(cmd, row.rlimit_fsize)
    return Result(case, cmd, p.returncode, p.stdout, p.stderr)


@pytest.fixture(scope="module")
def results(request, tmp_path_factory) -> dict[str, Result]:
    """Run the selected rows (in parallel subprocesses); the base run first if a selected row needs it."""
    selected = {item.callspec.params["row"].id for item in request.session.items
                if getattr(item, "callspec", None) is not None and "row" in item.callspec.params
                and item.module is request.module}
    rows = [r for r in ROWS if r.id in selected] or ROWS
    root = tmp_path_factory.mktemp("bad_input_cli")
    base = None
    if any(r.needs_base for r in rows):
        base_case = Case(root / "_base", None)
        make_dataset(base_case.ds)
        p = _run(base_case.train())
        assert p.returncode == 0, f"the base run failed:\n{p.stderr[-3000:]}"
        base = base_case.out
    workers = max(2, min(4, (os.cpu_count() or 2) + 1))
    with ThreadPoolExecutor(workers) as pool:
        futures = {r.id: pool.submit(_run_row, r, root, base) for r in rows}
        return {k: f.result() for k, f in futures.items()}


def _params():
    for row in ROWS:
        marks = [pytest.mark.xfail(strict=False, reason=row.xfail)] if row.xfail else []
        yield pytest.param(row, id=row.id, marks=marks)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _assert_nothing_half_written(out: Path) -> None:
    from detector.checkpoint import safe_load

    for p in _files(out):
        assert not p.name.startswith(".") and not p.name.endswith((".tmp", ".part")), f"temp file left: {p}"
        if p.suffix == ".pth":
            safe_load(p, verify=p.name != "nan_dump.pth")
        elif p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".jsonl":
            for line in p.read_text().splitlines():
                json.loads(line)


@pytest.mark.slow
@pytest.mark.parametrize("row", list(_params()))
def test_bad_input(row: Row, results: dict[str, Result]) -> None:
    r = results[row.id]
    tail = f"\n--- stderr ---\n{r.stderr[-4000:]}"
    assert r.code == row.code, f"exit code {r.code}, expected {row.code}{tail}"
    errors = [line for line in r.stderr.splitlines() if line.startswith(("error:", "crash"))]
    out = r.case.out
    if row.code == EXIT_OK:
        assert not errors, tail
        log = (out / "log.txt").read_text()
        assert re.search(row.skipped, log), f"skipped count not logged: {row.skipped!r}\n{log[-3000:]}"
        assert (out / "last.pth").is_file() and (out / "metrics.jsonl").is_file()
    else:
        assert len(errors) == 1, f"expected one error line{tail}"
        assert "Traceback" not in r.stderr, tail
        line = errors[0]
        for pattern in row.culprit:
            assert re.search(pattern, line), f"{pattern!r} not in {line!r}"
        if row.early:
            assert _files(out) == [], f"a config error wrote {_files(out)}"
        elif r.cmd[0] == "train.py" and row.check is not _unchanged_run:
            log = (out / "log.txt").read_text()  # the run directory was opened: the traceback is in its log
            assert "Traceback (most recent call last)" in log and line[len("error: "):][:60] in log, log[-3000:]
    _assert_nothing_half_written(out)
    if row.check is not None:
        row.check(r.case, errors[0] if errors else "")


def test_every_row_id_is_unique() -> None:
    ids = [r.id for r in ROWS]
    assert len(ids) == len(set(ids))
