"""Import structure: no cycle, no back-edge from data/ into detector/ (only the config types and the error kinds every
package raises), no plotting pulled in by the data or metrics packages, no private names imported across packages,
and the builders import eagerly.

The graph is read from the source (module-level imports); what a module really loads is checked in a fresh
interpreter per module.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("detector", "data")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


FILES = {_module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}
DATA_MODULES = sorted(m for m in FILES if m == "data" or m.startswith("data."))
DATA_MAY_IMPORT = {"detector.config", "detector.errors"}  # the config types and the user-error kinds


def _imports(module: str, node: ast.Import | ast.ImportFrom) -> list[tuple[str, str]]:
    """(imported module of this repo or '', imported name) pairs of one import statement."""
    if isinstance(node, ast.Import):
        return [(a.name if a.name in FILES else "", a.name) for a in node.names]
    base = node.module or ""
    if node.level:
        pkg = module.split(".") if FILES[module].name == "__init__.py" else module.split(".")[:-1]
        pkg = pkg[: len(pkg) - (node.level - 1)]
        base = ".".join(pkg + ([base] if base else []))
    out = []
    for a in node.names:
        sub = f"{base}.{a.name}"
        target = sub if sub in FILES else base if base in FILES else ""
        out.append((target, a.name))
    return out


def _graph() -> dict[str, set[str]]:
    """Module -> modules of this repo it imports at module level."""
    edges = {}
    for mod, path in FILES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        edges[mod] = {t for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
                      for t, _ in _imports(mod, node) if t}
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a self-loop): Tarjan, iterative."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1 or v in edges[v]:
                    out.append(sorted(comp))
    return out


def test_cycle_finder_finds_a_cycle():  # the checker itself: a known cycle and a known acyclic graph
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_no_import_cycle():
    assert _cycles(_graph()) == []


def test_data_imports_only_the_config_from_detector():
    edges = _graph()
    bad = {m: sorted(t for t in edges[m] if t.startswith("detector") and t not in DATA_MAY_IMPORT)
           for m in DATA_MODULES}
    assert {m: t for m, t in bad.items() if t} == {}


def test_no_private_name_imported_across_packages():
    """A leading-underscore name may be shared between modules of one package, never across packages."""
    bad = []
    for mod, path in FILES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            for target, name in _imports(mod, node):
                if not (target and name.startswith("_") and not name.startswith("__")):
                    continue
                package = mod if FILES[mod].name == "__init__.py" else mod.rpartition(".")[0]
                if target.rpartition(".")[0] != package:
                    bad.append(f"{mod} imports {name} from {target}")
    assert bad == []


@pytest.mark.parametrize("module", ["detector.build", "detector.dense", "detector.fovea", "detector.retinanet",
                                    "detector.faster_rcnn", "detector.losses.criterion"])
def test_builders_import_eagerly(module):
    """The registries and builders have no function-level imports (so no hidden cycle)."""
    tree = ast.parse(FILES[module].read_text(encoding="utf-8"))
    deferred = [f"line {n.lineno}" for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert deferred == []


def _loaded_by(module: str) -> set[str]:
    code = f"import importlib, json, sys; importlib.import_module({module!r}); print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("module", DATA_MODULES)
def test_data_module_loads_no_detector_code_or_plotting(module):
    loaded = _loaded_by(module)
    assert "matplotlib" not in loaded
    assert {m for m in loaded if m.startswith("detector")} <= {"detector"} | DATA_MAY_IMPORT


@pytest.mark.parametrize("module", ["detector.metrics", "detector.build", "detector.losses"])
def test_metrics_and_models_load_without_plotting(module):
    loaded = _loaded_by(module)
    assert "matplotlib" not in loaded and "data.build" not in loaded


def test_reports_still_reachable_from_the_metrics_package():
    code = ("import sys; from detector.metrics import write_reports; "
            "print(write_reports.__module__, 'matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         check=True)
    assert out.stdout.split() == ["detector.metrics.reports", "True"]
