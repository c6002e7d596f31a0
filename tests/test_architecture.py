"""The package's structure as docs/ARCHITECTURE.md states it: every module named in its layer table,
imports only downward (those inside functions too), no import cycle, and the low layers light.

The import graph is read with ``ast`` from the source (nothing is imported for it), the way a reader
sees the code; the subprocess tests then check what importing really pulls in.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "segdino"
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"


def package_modules() -> dict[str, Path]:
    """Dotted name (``segdino.data.dataset``; ``segdino`` for the root) -> file, for every module."""
    mods = {}
    for f in PACKAGE.rglob("*.py"):
        parts = f.relative_to(ROOT).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


def _imported(module: str, node: ast.AST, mods: dict[str, Path]) -> list[str]:
    """The package modules one import statement of ``module`` names (the deepest module each name is)."""
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".") if mods[module].name == "__init__.py" else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        names = [f"{target}.{a.name}" for a in node.names] + [target]
    else:
        names = [a.name for a in node.names]
    found = []
    for name in names:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        if name and name != module:
            found.append(name)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its file; a package's ``__init__`` naming
    its own submodules is left out (re-exports are its job)."""
    mods = package_modules()
    graph = {}
    for module, f in mods.items():
        edges = set()
        for node in ast.walk(ast.parse(f.read_text(), filename=str(f))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges.update(t for t in _imported(module, node, mods)
                             if not (f.name == "__init__.py" and t.startswith(module + ".")))
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def documented_layers() -> dict[str, int]:
    """Module (dotted, ``segdino.`` prefixed) -> layer number, from the table under "## Layers"."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    layers = {}
    for line in section.splitlines():
        m = re.match(r"^\|\s*(\d+)\.[^|]*\|(.*)\|\s*$", line)
        if not m:
            continue
        for name in re.findall(r"`([^`]+)`", m.group(2)):
            full = "segdino" if name == "segdino" else f"segdino.{name}"
            assert full not in layers, f"{name} is named in two layers of {ARCHITECTURE.name}"
            layers[full] = int(m.group(1))
    assert layers, f"{ARCHITECTURE} has no layer table under '## Layers'"
    return layers


# --- the graph itself ----------------------------------------------------------------------------


def test_cycle_finder_finds_a_cycle_and_passes_a_chain():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_graph_sees_imports_inside_functions():
    graph = import_graph()
    # cli/export.py imports the exporter only inside its handler, to start fast.
    assert "segdino.export" in graph["segdino.cli.export"]
    assert "segdino.ops" in graph["segdino.data.dataset"]


def test_no_import_cycle_in_the_package():
    found = cycles(import_graph())
    assert not found, f"import cycles (imports inside functions count): {found}"


def test_every_module_imports_in_a_fresh_interpreter():
    # One interpreter; before each module every segdino module is dropped, so each import starts
    # from nothing of the package, as in a new process (torch and timm stay loaded: that is only time).
    names = sorted(m for m in package_modules() if m != "segdino.__main__")
    code = (
        "import importlib, sys, traceback\n"
        f"names = {names!r}\n"
        "failed = []\n"
        "for name in names:\n"
        "    for m in [m for m in sys.modules if m == 'segdino' or m.startswith('segdino.')]:\n"
        "        del sys.modules[m]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as e:\n"
        "        failed.append(f'{name}: {type(e).__name__}: {e}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]


# --- the low layers stay light --------------------------------------------------------------------


def test_building_a_2d_dataset_does_not_import_timm_or_the_model(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(images / f"case{i}.png")
        mask = np.zeros((40, 48), np.uint8)
        mask[10:30, 5 + i : 25 + i] = 255
        Image.fromarray(mask).save(masks / f"case{i}.png")
    code = (
        "import sys\n"
        "import segdino.data\n"
        "from segdino.data.dataset import SegmentationDataset\n"
        f"ds = SegmentationDataset({str(tmp_path)!r}, split='all', image_size=(32, 32))\n"
        "item = ds[0]\n"
        "assert len(ds) == 3 and tuple(item['image'].shape) == (3, 32, 32), (len(ds), item['image'].shape)\n"
        "heavy = sorted(m for m in sys.modules if m == 'timm' or m.startswith('timm.')\n"
        "               or m in ('segdino.backbone', 'segdino.model', 'segdino.inference'))\n"
        "print(' '.join(heavy))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "", f"building a 2D dataset imported {done.stdout.strip()}"


@pytest.mark.parametrize("module,allowed", [("segdino.ops", {"segdino.errors"}), ("segdino.errors", set())])
def test_lowest_modules_import_almost_nothing_of_the_package(module, allowed):
    assert import_graph()[module] <= allowed


def test_kernels_import_nothing_else_of_the_package():
    graph = import_graph()
    for module, edges in graph.items():
        if module.startswith("segdino.kernels"):
            outside = {t for t in edges if not t.startswith("segdino.kernels")}
            assert not outside, f"{module} imports {sorted(outside)}"


# --- the documented layout ------------------------------------------------------------------------


def upward_imports(graph: dict[str, set[str]], layers: dict[str, int]) -> list[str]:
    """Each import of a module from a higher layer than its own, in words."""
    return [f"{m} (layer {layers[m]}) imports {t} (layer {layers[t]})"
            for m, edges in sorted(graph.items()) for t in sorted(edges)
            if m in layers and t in layers and layers[t] > layers[m]]


def test_layer_check_catches_an_upward_import():
    layers = documented_layers()
    graph = {"segdino.data.dataset": {"segdino.model", "segdino.ops"}, "segdino.model": {"segdino.ops"}}
    assert upward_imports(graph, layers) == [
        f"segdino.data.dataset (layer {layers['segdino.data.dataset']}) imports segdino.model "
        f"(layer {layers['segdino.model']})"]
def test_every_module_is_in_the_layer_table_and_nothing_else():
    layers, mods = documented_layers(), package_modules()
    missing = sorted(m for m in mods if m not in layers)
    unknown = sorted(m for m in layers if m not in mods)
    assert not missing, f"modules not named in the layer table of {ARCHITECTURE.name}: {missing}"
    assert not unknown, f"{ARCHITECTURE.name} names modules that do not exist: {unknown}"


def test_imports_go_only_downward():
    upward = upward_imports(import_graph(), documented_layers())
    assert not upward, "imports against the layers of docs/ARCHITECTURE.md:\n" + "\n".join(upward)


