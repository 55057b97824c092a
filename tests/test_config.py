"""Strict config: unknown keys, types, _base_ merging, overrides, dump/reload."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from detector.config import Config, ConfigError, dump_config, load_config

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_typo_in_file_names_key_file_and_suggestion(tmp_path):
    f = write(tmp_path / "exp.yaml", {"solver": {"lr_stepz": [1, 2]}})
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert "solver.lr_stepz" in msg and "solver.lr_steps" in msg and str(f) in msg


def test_typo_in_override_names_key_and_suggestion(tmp_path):
    f = write(tmp_path / "exp.yaml", {})
    with pytest.raises(ConfigError) as e:
        load_config(f, ["solver.lr_stepz=[60, 80]"])
    msg = str(e.value)
    assert "solver.lr_stepz" in msg and "Did you mean 'solver.lr_steps'" in msg and "command line" in msg


def test_unknown_section_suggests(tmp_path):
    f = write(tmp_path / "exp.yaml", {"solvr": {"base_lr": 0.1}})
    with pytest.raises(ConfigError, match="'solver'"):
        load_config(f)


@pytest.mark.parametrize("override, key", [
    ("solver.base_lr=fast", "solver.base_lr"),
    ("solver.lr_steps=7", "solver.lr_steps"),
    ("data.batch_size=2.5", "data.batch_size"),
    ("runtime.amp=3", "runtime.amp"),
    ("model.backbone.dcn_stages=[true, 1]", "model.backbone.dcn_stages[1]"),
])
def test_wrong_type_is_an_error_naming_the_key(tmp_path, override, key):
    f = write(tmp_path / "exp.yaml", {})
    with pytest.raises(ConfigError) as e:
        load_config(f, [override])
    assert f"'{key}'" in str(e.value)


def test_overrides_are_typed_yaml(tmp_path):
    f = write(tmp_path / "exp.yaml", {})
    cfg = load_config(f, ["solver.base_lr=4e-3", "solver.lr_steps=[60, 80]", "data.batch_size=4",
                          "runtime.amp=true", "model.weights=null", "solver.grad_clip=35"])
    assert cfg.solver.base_lr == 0.004 and isinstance(cfg.solver.base_lr, float)
    assert cfg.solver.lr_steps == [60, 80]
    assert cfg.data.batch_size == 4 and cfg.runtime.amp is True and cfg.model.weights is None
    assert cfg.solver.grad_clip == 35.0 and isinstance(cfg.solver.grad_clip, float)  # int accepted as float


def test_base_merge_is_deep_and_typed(tmp_path):
    write(tmp_path / "base.yaml", {"solver": {"base_lr": 0.008, "lr_steps": [75, 95]},
                                   "model": {"anchors": {"scales_per_octave": 2, "ratios": [1.0]}}})
    f = write(tmp_path / "child.yaml", {"_base_": "base.yaml", "solver": {"lr_steps": [60, 80]},
                                        "model": {"anchors": {"scales_per_octave": 3}}})
    cfg = load_config(f)
    assert cfg.solver.base_lr == 0.008 and cfg.solver.lr_steps == [60, 80]
    assert cfg.model.anchors.scales_per_octave == 3 and cfg.model.anchors.ratios == [1.0]
    assert cfg.name == "child"


def test_only_one_base_level(tmp_path):
    write(tmp_path / "a.yaml", {})
    write(tmp_path / "b.yaml", {"_base_": "a.yaml"})
    f = write(tmp_path / "c.yaml", {"_base_": "b.yaml"})
    with pytest.raises(ConfigError, match="only one level"):
        load_config(f)


def test_error_in_base_names_base_file(tmp_path):
    write(tmp_path / "base.yaml", {"loss": {"sb_intit": 50}})
    f = write(tmp_path / "child.yaml", {"_base_": "base.yaml"})
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert "base.yaml" in str(e.value) and "loss.sb_init" in str(e.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("solver: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)


def test_dump_reloads_to_same_object(tmp_path):
    f = write(tmp_path / "exp.yaml", {"name": "x", "solver": {"lr_steps": [60, 80]}})
    cfg = load_config(f, ["loss.type=ap", "solver.max_iters=5"])
    dump_config(cfg, tmp_path / "out" / "config.yaml")
    again = load_config(tmp_path / "out" / "config.yaml")
    assert again == cfg and isinstance(again, Config)


def test_every_shipped_config_validates():
    files = sorted((REPO / "configs").glob("*.yaml"))
    assert files, "configs/ is empty"
    for f in files:
        load_config(f)


# ------------------------------------------------------------------------------------------ semantic checks
@pytest.mark.parametrize("override, expected", [
    ("data.batch_size=0", "'data.batch_size' must be >= 1, got 0"),
    ("data.test_batch_size=-1", "'data.test_batch_size' must be >= 1, got -1"),
    ("solver.base_lr=0", "'solver.base_lr' must be > 0, got 0.0"),
    ("solver.momentum=1.0", "'solver.momentum' must be in [0, 1), got 1.0"),
    ("runtime.checkpoint_interval=0", "'runtime.checkpoint_interval' must be >= 1, got 0"),
    ("runtime.log_interval=0", "'runtime.log_interval' must be >= 1, got 0"),
    ("runtime.keep_last=-1", "'runtime.keep_last' must be >= 0, got -1"),
    ("data.aug.expand_prob=1.01", "'data.aug.expand_prob' must be in [0, 1], got 1.01"),
    ("loss.focal_alpha=-0.1", "'loss.focal_alpha' must be in [0, 1], got -0.1"),
    ("model.test.score_thr=2", "'model.test.score_thr' must be in [0, 1], got 2.0"),
    ("model.anchors.ratios=[]", "'model.anchors.ratios' must not be empty"),
    ("model.coder_stds=[0.1, 0.1, 0.2]", "'model.coder_stds' must have 4 values"),
    ("data.aug.min_ious=[0.1, 1.5]", "'data.aug.min_ious[1]' must be in [0, 1], got 1.5"),
])
def test_out_of_range_values_name_key_and_range(tmp_path, override, expected):
    f = write(tmp_path / "exp.yaml", {})
    with pytest.raises(ConfigError) as e:
        load_config(f, [override])
    assert str(e.value) == f"command line: {expected}" or str(e.value).startswith(f"command line: {expected}")


@pytest.mark.parametrize("override, key, suggestion", [
    ("loss.type=alpr", "loss.type", "alrp"),
    ("model.type=fovae", "model.type", "fovea"),
    ("model.backbone.name=resnet5O", "model.backbone.name", "resnet50"),
    ("model.assigner.type=maxiou", "model.assigner.type", "max_iou"),
    ("loss.reg=smoothl1", "loss.reg", "smooth_l1"),
    ("loss.rank_scope=globl", "loss.rank_scope", "global"),
    ("runtime.device=cuda0", "runtime.device", "cuda"),
    ("data.dataset=shape", "data.dataset", "shapes"),
])
def test_unknown_names_list_the_valid_ones_and_the_closest(tmp_path, override, key, suggestion):
    f = write(tmp_path / "exp.yaml", {})
    with pytest.raises(ConfigError) as e:
        load_config(f, [override])
    assert f"'{key}' must be one of" in str(e.value) and f"Did you mean '{suggestion}'?" in str(e.value)


def test_enumerations_follow_the_registries():
    from detector.backbone import BACKBONES
    from detector.build import ASSIGNERS, MODELS
    from detector.config_checks import enum_values
    from detector.losses.criterion import CRITERIA

    enums = enum_values()
    assert set(enums["model.type"]) >= set(MODELS) and set(enums["loss.type@dense"]) == set(CRITERIA)
    assert set(enums["model.backbone.name"]) == set(BACKBONES) and set(enums["model.assigner.type"]) == set(ASSIGNERS)


@pytest.mark.parametrize("overrides, expected", [
    (["loss.type=ce"], "'loss.type' must be one of alrp, ap, focal for model.type retinanet, got 'ce'"),
    (["model.type=faster_rcnn", "loss.type=focal"], "for model.type faster_rcnn"),
    (["model.type=faster_rcnn", "loss.type=ce", "loss.reg=smooth_l1"], "'loss.reg' must be one of l1, giou"),
    (["loss.type=focal", "loss.rank_scope=global"], "'loss.rank_scope' must be 'device' with loss.type focal"),
    (["data.test_short=600", "data.test_max=500"], "'data.test_max' (500) must be >= 'data.test_short' (600)"),
    (["solver.lr_steps=[9, 8]"], "'solver.lr_steps' must be strictly increasing"),
    (["solver.lr_steps=[]"], "'solver.lr_steps' must not be empty"),
    (["solver.lr_step_iters=[0, 100]"], "'solver.lr_step_iters[0]' must be >= 1"),
    (["model.assigner.type=max_iou", "model.assigner.neg_iou=0.6"], "'model.assigner.neg_iou' (0.6) must not exceed"),
    (["model.weights=/no/such/file.pth"], "'model.weights': file not found: /no/such/file.pth"),
    (["model.backbone.weights=/no/such/r50.pth"], "'model.backbone.weights': file not found"),
    (["name=a/b"], "'name' names the run directory"),
])
def test_cross_field_rules(tmp_path, overrides, expected):
    f = write(tmp_path / "exp.yaml", {})
    with pytest.raises(ConfigError) as e:
        load_config(f, overrides)
    assert expected in str(e.value)


def test_valid_edges_pass(tmp_path):
    f = write(tmp_path / "exp.yaml", {})
    cfg = load_config(f, ["solver.epochs=12", "solver.lr_steps=[11]", "data.aug.flip_prob=1", "runtime.keep_last=0",
                          "runtime.eval_interval=0", "solver.warmup_iters=0", "model.backbone.weights=IMAGENET1K_V1",
                          "solver.max_iters=10", "solver.lr_step_iters=[9]", "loss.type=ce", "model.type=faster_rcnn",
                          "loss.reg=giou"])
    assert cfg.solver.lr_step_iters == [9] and cfg.solver.epochs is None
    # iteration steps with an epoch schedule cannot be checked before the loader exists: accepted
    assert load_config(f, ["solver.epochs=2", "solver.lr_step_iters=[5000]"]).solver.lr_steps is None


def test_every_problem_on_one_line_with_its_source(tmp_path):
    f = write(tmp_path / "exp.yaml", {"data": {"batch_size": -1}, "solver": {"base_lr": 0.01}})
    with pytest.raises(ConfigError) as e:
        load_config(f, ["runtime.log_interval=0"])
    msg = str(e.value)
    assert "\n" not in msg
    assert f"{f}: 'data.batch_size' must be >= 1, got -1" in msg  # from the file
    assert "command line: 'runtime.log_interval' must be >= 1, got 0" in msg  # from the override


def test_an_override_can_fix_a_bad_file_value(tmp_path):
    f = write(tmp_path / "exp.yaml", {"runtime": {"log_interval": 0}})
    with pytest.raises(ConfigError, match=r"exp\.yaml: 'runtime\.log_interval' must be >= 1"):
        load_config(f)
    assert load_config(f, ["runtime.log_interval=5"]).runtime.log_interval == 5


def test_base_that_points_nowhere_names_the_config_that_names_it(tmp_path):
    f = write(tmp_path / "child.yaml", {"_base_": "../bases/coco.yaml"})
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert msg.startswith(f"{f}: its _base_ '../bases/coco.yaml' was not found")
    assert str((tmp_path / "../bases/coco.yaml").resolve()) in msg


def test_config_from_dict_checks_unless_told_not_to():
    """A plain dict is checked too (the run's config.yaml, a checkpoint's config); check=False builds the raw value."""
    from detector.config import config_from_dict

    with pytest.raises(ConfigError, match=r"<dict>: 'data\.batch_size' must be >= 1"):
        config_from_dict({"data": {"batch_size": 0}})
    cfg = config_from_dict({"data": {"batch_size": 0}}, check=False)
    assert cfg.data.batch_size == 0


def test_a_config_read_back_from_a_checkpoint_is_not_refused_for_a_moved_weights_file(tmp_path):
    """model.weights only mattered when training started; evaluating that run's checkpoint must not need it."""
    from detector.config import config_from_dict, config_to_dict

    weights = tmp_path / "pretrained.pth"
    weights.write_bytes(b"x")
    cfg = load_config(write(tmp_path / "exp.yaml", {}), [f"model.weights={weights}"])
    weights.unlink()
    assert config_from_dict(config_to_dict(cfg)).model.weights == str(weights)
    with pytest.raises(ConfigError, match="'model.weights': file not found"):
        load_config(write(tmp_path / "exp.yaml", {}), [f"model.weights={weights}"])


def test_lr_steps_past_the_end_are_a_warning_not_an_error():
    """Shortening a schedule on the command line (the issue-13 repro: default.yaml with solver.epochs=3) works;
    the trainer's schedule warning names the steps that never apply."""
    from detector.solver import resolve_schedule, schedule_warnings

    cfg = load_config(REPO / "configs" / "default.yaml", ["solver.epochs=3"])
    assert cfg.solver.lr_steps == [15, 18]
    lines = schedule_warnings(resolve_schedule(cfg.solver, 10), None)
    assert any("never apply" in line and "solver.lr_steps" in line for line in lines)
