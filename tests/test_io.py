import os

import pytest

from ternaus import io


@pytest.mark.parametrize("setting,durable,flushes", [(None, True, 2), ("1", True, 2), ("0", True, 0),
                                                     (None, False, 0)])
def test_durable_writes_flush_the_file_and_its_folder_unless_turned_off(tmp_path, monkeypatch, setting, durable,
                                                                        flushes):
    if setting is None:
        monkeypatch.delenv("TERNAUS_FSYNC", raising=False)  # the suite turns it off; a user's default is on
    else:
        monkeypatch.setenv("TERNAUS_FSYNC", setting)
    calls = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd) or real_fsync(fd))
    path = io.atomic_write_bytes(tmp_path / "x.bin", b"abc", durable=durable)
    assert path.read_bytes() == b"abc" and [p.name for p in tmp_path.iterdir()] == ["x.bin"]
    assert len(calls) == flushes
