"""Dependencies are declared as they are used: every third-party module a package file imports is
declared by the core or by the extra that file belongs to, the installed versions meet the declared
minimums, and the install lines of the README and of our messages name extras that exist.

Cheap by design: the imports are read with ``ast`` (nothing is imported), the module -> distribution
map comes from ``importlib.metadata``; no environment is built.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata as metadata
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "segdino"

# Files (or folders, ending in "/") whose optional features need an extra, and which extras.
EXTRAS_OF_FILES = {
    "segdino/volumes/": {"volumes"},
    "segdino/data/synthetic.py": {"volumes"},  # the CT-like demo volumes are written as NIfTI
    "segdino/data/synthetic_volumes.py": {"volumes"},
    "segdino/data/whole_scan.py": {"volumes"},  # generated whole scans, written as NIfTI
    "segdino/export.py": {"onnx"},
    "segdino/onnx_runtime.py": {"onnx"},
    "segdino/quantize.py": {"onnx"},
    "segdino/benchmark.py": {"onnx"},
}
# Modules only probed for (the import sits in a try that treats failure as "not available") and
# shipped by a declared package: triton comes with torch's CUDA builds.
PROBED = {"triton": "torch"}
# Packages the package needs without importing them by name: extra -> distributions.
USED_INDIRECTLY = {
    "onnx": {"onnxscript"},  # torch.onnx's dynamo exporter, the fallback in export.py, imports it
}
# The versions on the GPU machine that the minimums must admit.
GPU_MACHINE = {"torch": "2.11", "timm": "1.0.29"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirements() -> tuple[list[Requirement], dict[str, list[Requirement]]]:
    project = _pyproject()["project"]
    core = [Requirement(r) for r in project["dependencies"]]
    extras = {k: [Requirement(r) for r in v] for k, v in project["optional-dependencies"].items()}
    return core, extras


def third_party_imports(path: Path) -> dict[str, bool]:
    """Top-level names of the absolute, non-stdlib imports of one file -> whether any is at module level."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top_level = {id(node) for node in tree.body}
    found: dict[str, bool] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            root = name.split(".")[0]
            if root in sys.stdlib_module_names or root in ("segdino", "__future__"):
                continue
            found[root] = found.get(root, False) or id(node) in top_level
    return found


@functools.lru_cache(maxsize=None)
def _installed_modules() -> dict[str, list[str]]:
    return metadata.packages_distributions()  # reads every installed distribution's file list once


def _distribution_of(module: str) -> str:
    dists = _installed_modules().get(module)
    if not dists:
        pytest.fail(f"module {module} is imported by the package but not installed here, "
                    "so its distribution cannot be checked")
    return _norm(dists[0])


def _extras_of(rel: str) -> set[str]:
    extras: set[str] = set()
    for where, names in EXTRAS_OF_FILES.items():
        if rel == where or (where.endswith("/") and rel.startswith(where)):
            extras |= names
    return extras


def package_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_imported_module_is_declared_where_its_file_belongs():
    core, extras = _requirements()
    core_names = {_norm(r.name) for r in core}
    extra_names = {k: {_norm(r.name) for r in v} for k, v in extras.items()}
    for where, names in EXTRAS_OF_FILES.items():
        assert (ROOT / where).exists(), f"{where} is listed as belonging to an extra but does not exist"
        assert names <= set(extras), (where, names)
    undeclared, eager = [], []
    for path in package_files():
        rel = path.relative_to(ROOT).as_posix()
        allowed = set(core_names)
        for extra in _extras_of(rel):
            allowed |= extra_names[extra]
        for module, at_module_level in third_party_imports(path).items():
            if module in PROBED:
                assert _norm(PROBED[module]) in core_names, module
                continue
            dist = _distribution_of(module)
            if dist not in allowed:
                undeclared.append(f"{rel}: imports {module} (distribution {dist}), declared by neither the core "
                                  f"nor {sorted(_extras_of(rel)) or 'an extra of this file'}")
            elif dist not in core_names and at_module_level:
                eager.append(f"{rel}: imports the optional {module} at module level")
    assert undeclared == [], "\n".join(undeclared)
    assert eager == [], "\n".join(eager)
    for extra, dists in USED_INDIRECTLY.items():
        assert {_norm(d) for d in dists} <= extra_names[extra], (extra, dists)


def test_declared_packages_are_used_and_minimums_are_met_here_and_on_the_gpu_machine():
    core, extras = _requirements()
    imported = set()
    for path in package_files():
        for module in third_party_imports(path):
            if module not in PROBED:
                imported.add(_distribution_of(module))
    # Every core requirement is imported by the package: nothing declared "just in case".
    unused = [r.name for r in core if _norm(r.name) not in imported]
    assert unused == [], unused
    for req in core + [r for v in extras.values() for r in v]:
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            continue  # an extra not installed in this environment
        assert req.specifier.contains(Version(installed), prereleases=True), \
            f"{req}: the installed {installed} does not meet it"
    for name, version in GPU_MACHINE.items():
        req = next(r for r in core if _norm(r.name) == name)
        assert req.specifier.contains(Version(version)), f"{req} excludes the GPU machine's {name} {version}"


# `pip install -e ".[a,b]"`, `pip install "segdino[a]"`, `pip install segdino[a]`
_INSTALL = re.compile(r"pip install (?:-e )?['\"]?(?:\.|segdino)\[([a-z0-9_,\- ]+)\]")


def _extras_named_in(text: str) -> set[str]:
    return {e.strip() for m in _INSTALL.finditer(text) for e in m.group(1).split(",")}


def test_install_lines_name_the_extras_that_exist():
    _, extras = _requirements()
    readme = (ROOT / "README.md").read_text()
    in_readme = _extras_named_in(readme)
    assert in_readme, "the README shows no install line with an extra"
    # Every extra a user may need is shown in the README, and only extras that exist are named
    # anywhere (README, docs, the package's own messages).
    assert set(extras) <= in_readme, f"extras the README never shows: {sorted(set(extras) - in_readme)}"
    sources = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *package_files()]
    for path in sources:
        unknown = _extras_named_in(path.read_text()) - set(extras)
        assert not unknown, f"{path.relative_to(ROOT)} names extras that pyproject.toml lacks: {sorted(unknown)}"


def test_the_scan_sees_lazy_imports_and_module_level_ones(tmp_path):
    """The scan itself: imports inside functions count, relative and standard-library ones do not."""
    f = tmp_path / "m.py"
    f.write_text("import os\nimport numpy as np\nfrom . import x\nfrom PIL import Image\n"
                 "def f():\n    import nibabel\n    from onnxruntime.quantization import q\n")
    assert third_party_imports(f) == {"numpy": True, "PIL": True, "nibabel": False, "onnxruntime": False}
