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
