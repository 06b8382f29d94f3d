"""Snapshots (service/storage/snapshot.py) on real files: round trip, fallback past a
damaged newest one, refusal of another layout."""
import logging

import numpy as np
import pytest

from yujing.service.storage.snapshot import SnapshotLayoutError, read_latest_snapshot, write_snapshot


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {"sf": rng.random((50, 13)), "si": rng.integers(-5, 5, (50, 5)), "sb": rng.integers(0, 255, (50, 6), np.uint8),
            "sw": rng.integers(0, 60000, (50, 20), np.uint16), "empty": np.zeros((0, 3))}


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_round_trip_and_retention(tmp_path):
    for seed in range(3):
        write_snapshot(tmp_path, _arrays(seed), {"keys": [["t", f"s{seed}"]]}, layout_version="L1")
    assert len(list(tmp_path.glob("*.snap"))) == 2
    arrays, meta, path = read_latest_snapshot(tmp_path, layout_version="L1")
    _same(arrays, _arrays(2))
    assert meta == {"keys": [["t", "s2"]]} and path.name.endswith("3.snap")
    assert read_latest_snapshot(tmp_path / "none", layout_version="L1") is None


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_newest_snapshot_falls_back_to_the_previous(tmp_path, caplog, damage):
    write_snapshot(tmp_path, _arrays(1), {"n": 1}, layout_version="L1")
    newest = write_snapshot(tmp_path, _arrays(2), {"n": 2}, layout_version="L1")
    data = bytearray(newest.read_bytes())
    if damage == "truncate":
        data = data[: len(data) - 100]
    else:
        data[-50] ^= 0xFF
    newest.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        arrays, meta, _ = read_latest_snapshot(tmp_path, layout_version="L1")
    assert meta == {"n": 1}
    _same(arrays, _arrays(1))
    assert "damaged" in caplog.text


def test_another_layout_is_refused_naming_both(tmp_path):
    write_snapshot(tmp_path, _arrays(), {}, layout_version="layout-old")
    with pytest.raises(SnapshotLayoutError) as err:
        read_latest_snapshot(tmp_path, layout_version="layout-new")
    assert "layout-old" in str(err.value) and "layout-new" in str(err.value)


def test_a_leftover_temp_file_is_ignored_and_cleaned(tmp_path):
    (tmp_path / "snapshot-00000000000000000009.snap.tmp").write_bytes(b"half written")
    write_snapshot(tmp_path, _arrays(), {"ok": True}, layout_version="L1")
    assert not list(tmp_path.glob("*.tmp"))
    assert read_latest_snapshot(tmp_path, layout_version="L1")[1] == {"ok": True}
