"""segdino.cli.data: the `segdino data` command line."""

from __future__ import annotations

import pytest

from segdino.cli import main as cli_main
from segdino.errors import DataError


def test_data_command_without_subcommand(capsys):
    assert cli_main(["data"]) == 2


def test_debug_is_accepted_before_or_after_any_subcommand(tmp_path, capsys):
    """``--debug`` shows the traceback wherever it stands; without it, one line and exit 2."""
    missing = str(tmp_path / "none")
    train = ["train", "--data", missing, "--out", str(tmp_path / "run")]
    assert cli_main(train) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    for argv in (["--debug", *train], [*train, "--debug"], ["train", "--debug", "--data", missing, "--out",
                                                            str(tmp_path / "run")]):
        with pytest.raises(DataError, match="no such folder"):
            cli_main(argv)
    # Nested subcommands too: the check runs (exit 1: not usable) instead of argparse refusing the flag.
    assert cli_main(["data", "check", "--data", missing, "--debug"]) == 1
    assert "NOT usable" in capsys.readouterr().out
