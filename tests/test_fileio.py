"""segdino.fileio: one ladder of read failures for every text file a user hands us."""

from __future__ import annotations

import pytest

from segdino.errors import ConfigError, DataError
from segdino.fileio import read_json, read_text


def test_read_text_drops_a_byte_order_mark(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes(b"\xef\xbb\xbfhello")
    assert read_text(p) == "hello"


def test_read_text_names_each_failure_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such config file$"):
        read_text(tmp_path / "nope.yaml", ConfigError, "YAML config", missing="no such config file")
    with pytest.raises(DataError, match=r": a folder, not a split file$"):
        read_text(tmp_path, DataError, "split file")
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(DataError, match=r"bad\.json: not a split file: byte 7 is not UTF-8 text"):
        read_text(bad, DataError, "split file")


def test_read_json_reads_through_the_same_ladder(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_json(tmp_path / "x.json", DataError)
    with pytest.raises(DataError, match="a folder, not a JSON file"):
        read_json(tmp_path, DataError)
    p = tmp_path / "x.json"
    p.write_text("[1, 2")
    with pytest.raises(DataError, match="not valid JSON"):
        read_json(p, DataError)
    p.write_text('{"k": [1, 2]}')
    assert read_json(p) == {"k": [1, 2]}
