"""The commands the documentation shows are commands the scripts accept."""

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _realdata_parser():
    spec = importlib.util.spec_from_file_location("realdata", ROOT / "benchmarks" / "realdata.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_parser()


def documented_commands(script: str) -> list[tuple[str, str]]:
    """(file, arguments) of every ``python <script> ...`` in inline code spans or indented code lines."""
    found = []
    name = re.escape(script)
    for doc in DOCS:
        text = doc.read_text()
        for m in re.finditer(rf"`python {name} ([^`]*)`", text):
            found.append((doc.name, " ".join(m.group(1).split())))
        for m in re.finditer(rf"^(?: {{4}}|\t)+python {name} (.*)$", text, flags=re.M):
            found.append((doc.name, m.group(1).strip()))
    return found


def test_documented_realdata_commands_parse():
    parser = _realdata_parser()
    commands = documented_commands("benchmarks/realdata.py")
    assert {cmd.split()[0] for _, cmd in commands} >= {"pack", "run", "plot"}, commands
    for doc, cmd in commands:
        try:
            parser.parse_args(shlex.split(cmd))
        except SystemExit:
            pytest.fail(f"{doc}: `python benchmarks/realdata.py {cmd}` is refused by the script")


def _test_names(path: Path) -> set[str]:
    import ast

    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def test_every_reliability_statement_names_tests_that_exist():
    """docs/RELIABILITY.md: each guarantee names its tests (in test_reliability.py unless a file is
    given), and each named test exists, so a renamed or deleted test cannot leave a claim unbacked."""
    text = (ROOT / "docs" / "RELIABILITY.md").read_text()
    bullets = []  # (default test file of its section, bullet text)
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        default = re.search(r"^Tests: `tests/(test_\w+\.py)`", section, flags=re.M)
        for bullet in re.findall(r"^- .*?(?=^- |\Z)", section, flags=re.M | re.S):
            bullets.append((default.group(1) if default else "test_reliability.py", bullet))
    assert len(bullets) >= 15, len(bullets)
    for default, bullet in bullets:
        named = re.findall(r"`(?:((?:\w+/)*test_\w+\.py)::)?(test_\w+)`", bullet)
        assert named, f"docs/RELIABILITY.md names no test for: {' '.join(bullet.split())[:120]}"
        for file, name in named:
            path = ROOT / "tests" / (file or default)
            assert name in _test_names(path), f"docs/RELIABILITY.md names {path.name}::{name}, which does not exist"
