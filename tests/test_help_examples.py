"""Every path an entry point's ``--help`` text shows in its examples exists in the repository.

Checked: ``configs/...yaml`` (globs must match something), ``scripts/...`` files and ``python -m scripts.NAME``
modules, and ``checkpoints/NAME/...`` run directories, whose NAME must be a config (train.py's default output
directory is ``checkpoints/<config name>/``). Placeholders (``CONFIG``, ``<config name>``) are not paths.
"""
from __future__ import annotations

import itertools
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

_CONFIG = re.compile(r"(?<![\w/.-])configs/[\w./*{},-]+?\.yaml")
_SCRIPT_FILE = re.compile(r"(?<![\w/.-])scripts/[\w.-]+\.(?:py|sh)")
_SCRIPT_MODULE = re.compile(r"python3? -m scripts\.(\w+)")
_CHECKPOINT = re.compile(r"(?<![\w/.-])checkpoints/([\w{},.-]+)")


def _expand_braces(text: str) -> list[str]:
    """``a_{x,y}_b`` -> ``[a_x_b, a_y_b]`` (shell brace expansion, no nesting)."""
    parts = re.split(r"\{([^{}]*)\}", text)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def missing_paths(text: str, repo: Path = REPO) -> list[str]:
    """The example paths in ``text`` that do not exist under ``repo`` (see the module docstring)."""
    missing = []
    for m in _CONFIG.finditer(text):
        for path in _expand_braces(m.group(0)):
            if not (list(repo.glob(path)) if "*" in path else (repo / path).is_file()):
                missing.append(path)
    for m in _SCRIPT_FILE.finditer(text):
        if not (repo / m.group(0)).is_file():
            missing.append(m.group(0))
    for m in _SCRIPT_MODULE.finditer(text):
        if not (repo / "scripts" / f"{m.group(1)}.py").is_file():
            missing.append(f"scripts/{m.group(1)}.py (python -m scripts.{m.group(1)})")
    for m in _CHECKPOINT.finditer(text):
        name = m.group(1)
        if name.endswith((".pth", ".pt")):  # a file right under checkpoints/ (e.g. converted weights)
            continue
        for run in _expand_braces(name):
            if not (repo / "configs" / f"{run}.yaml").is_file():
                missing.append(f"checkpoints/{run} (no configs/{run}.yaml)")
    return missing


def _entry_points() -> list[tuple[str, list[str]]]:
    out = [(name, [name, "--help"]) for name in ("train.py", "evaluate.py", "predict.py")]
    out += [(f"scripts/{p.name}", ["-m", f"scripts.{p.stem}", "--help"])
            for p in sorted((REPO / "scripts").glob("*.py")) if not p.name.startswith("_")]
    return out


def test_the_extractor_finds_wrong_paths():
    text = ("python train.py --config configs/X.yaml\n  python -m scripts.no_such_tool --out y\n"
            "  python -m scripts.plot_curves checkpoints/bccd_{alrp,nope}_r18 --out docs/c.png\n"
            "  default: checkpoints/<config name>/ or --config CONFIG; configs/default.yaml configs/*.yaml\n"
            "  bash scripts/missing.sh; scripts/bccd_recipe.sh")
    assert missing_paths(text) == ["configs/X.yaml", "scripts/missing.sh",
                                   "scripts/no_such_tool.py (python -m scripts.no_such_tool)",
                                   "checkpoints/bccd_nope_r18 (no configs/bccd_nope_r18.yaml)"]


@pytest.mark.parametrize("name, args", _entry_points(), ids=[n for n, _ in _entry_points()])
def test_help_examples_exist(name, args):
    if not (REPO / name).is_file():
        pytest.skip(f"{name} does not exist (yet)")
    res = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"{name} --help failed:\n{res.stderr[-2000:]}"
    assert "usage:" in res.stdout
    assert missing_paths(res.stdout) == [], f"{name} --help shows paths that do not exist"
