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


# --- further cases: every byte is checked, no silent fallback across layouts, retention,
# --- odd arrays, a large array set


def _small(n):
    return {"a": np.arange(n, dtype=np.int64), "b": np.full((2, 3), n, np.float32), "z": np.zeros(0, np.uint8)}


def test_a_flipped_byte_anywhere_is_detected(tmp_path):
    """Each byte of the newest file flipped in turn: the previous snapshot is served, except in
    the format-version field, where an unknown format is refused (never silently skipped)."""
    write_snapshot(tmp_path, _small(1), {"n": 1}, layout_version="L1")
    newest = write_snapshot(tmp_path, _small(2), {"n": 2}, layout_version="L1")
    good = newest.read_bytes()
    for i in range(len(good)):
        bad = bytearray(good)
        bad[i] ^= 0x5A
        newest.write_bytes(bytes(bad))
        if i in (8, 9):  # u16 format version
            with pytest.raises(SnapshotLayoutError, match="format version"):
                read_latest_snapshot(tmp_path, layout_version="L1")
            continue
        arrays, meta, path = read_latest_snapshot(tmp_path, layout_version="L1")
        assert meta == {"n": 1}, f"flip at byte {i} of {len(good)} not detected"
        _same(arrays, _small(1))
    newest.write_bytes(good)
    assert read_latest_snapshot(tmp_path, layout_version="L1")[1] == {"n": 2}


def test_bad_magic_and_tiny_files_fall_back(tmp_path, caplog):
    write_snapshot(tmp_path, _small(1), {"n": 1}, layout_version="L1")
    for content in (b"", b"YJ", b"NOTASNAP" + bytes(100)):
        (tmp_path / "snapshot-00000000000000000007.snap").write_bytes(content)
        with caplog.at_level(logging.WARNING):
            assert read_latest_snapshot(tmp_path, layout_version="L1")[1] == {"n": 1}
        assert "00000000000000000007" in caplog.text
        caplog.clear()


def test_a_newer_snapshot_of_another_layout_is_refused_not_skipped(tmp_path):
    write_snapshot(tmp_path, _small(1), {"n": 1}, layout_version="v1")
    newest = write_snapshot(tmp_path, _small(2), {"n": 2}, layout_version="v2")
    with pytest.raises(SnapshotLayoutError) as err:
        read_latest_snapshot(tmp_path, layout_version="v1")
    msg = str(err.value)
    assert "'v1'" in msg and "'v2'" in msg and newest.name in msg
    assert isinstance(err.value, RuntimeError)


def test_a_damaged_newest_then_another_layout_still_refuses(tmp_path):
    write_snapshot(tmp_path, _small(1), {"n": 1}, layout_version="old")
    newest = write_snapshot(tmp_path, _small(2), {"n": 2}, layout_version="new")
    newest.write_bytes(newest.read_bytes()[:-1])
    with pytest.raises(SnapshotLayoutError, match="'old'"):
        read_latest_snapshot(tmp_path, layout_version="new")


def test_leftover_temp_is_ignored_and_cleaned_by_the_reader(tmp_path):
    write_snapshot(tmp_path, _small(1), {"n": 1}, layout_version="L1")
    tmp = tmp_path / "snapshot-00000000000000000002.snap.tmp"
    tmp.write_bytes(b"YJSNAP\0\0 half a snapshot")
    arrays, meta, path = read_latest_snapshot(tmp_path, layout_version="L1")
    assert meta == {"n": 1} and path.name == "snapshot-00000000000000000001.snap"
    assert not tmp.exists()
    # the next write takes the next sequence and is the one read
    p2 = write_snapshot(tmp_path, _small(2), {"n": 2}, layout_version="L1")
    assert p2.name == "snapshot-00000000000000000002.snap"
    assert read_latest_snapshot(tmp_path, layout_version="L1")[2] == p2


@pytest.mark.parametrize("keep", [1, 3])
def test_retention_keeps_the_newest(tmp_path, keep):
    paths = [write_snapshot(tmp_path, _small(i), {"n": i}, layout_version="L1", keep=keep) for i in range(5)]
    assert sorted(tmp_path.iterdir()) == paths[-keep:]
    with pytest.raises(ValueError):
        write_snapshot(tmp_path, _small(0), {}, layout_version="L1", keep=0)


def test_odd_arrays_round_trip(tmp_path):
    base = np.arange(60, dtype=np.float64).reshape(6, 10)
    arrays = {
        "scalar": np.array(3.5),
        "bool": np.array([True, False, True]),
        "fortran": np.asfortranarray(base),
        "strided": base[::2, ::3],
        "big_endian": np.arange(5, dtype=">i4"),
        "bytes": np.array([b"ab", b"cde"]),
        "empty2d": np.zeros((4, 0), np.int16),
    }
    meta = {"sessions": [["tenant-a", "s1"], ["tenant-b", "s2"]], "n": 2, "unicode": "语境"}
    write_snapshot(tmp_path, arrays, meta, layout_version="L1")
    got, gmeta, _ = read_latest_snapshot(tmp_path, layout_version="L1")
    assert gmeta == meta
    for k, a in arrays.items():
        assert got[k].dtype == a.dtype and got[k].shape == a.shape, k
        np.testing.assert_array_equal(got[k], a, err_msg=k)
        assert got[k].flags.c_contiguous and got[k].flags.writeable


def test_unsupported_dtypes_and_meta_are_refused_and_leave_nothing(tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        write_snapshot(tmp_path, {"o": np.array([object()])}, {}, layout_version="L1")
    with pytest.raises(TypeError):
        write_snapshot(tmp_path, _small(1), {"x": object()}, layout_version="L1")
    assert list(tmp_path.iterdir()) == []
    assert read_latest_snapshot(tmp_path, layout_version="L1") is None


@pytest.mark.slow
def test_a_large_array_set_round_trips(tmp_path):
    # ~200 MB: one 192 MiB float64 table and a few smaller ones
    big = np.arange(24 << 20, dtype=np.float64).reshape(-1, 64)
    arrays = {"big": big, "ids": np.arange(1 << 20, dtype=np.int64), "flags": np.ones(1 << 20, np.uint8)}
    write_snapshot(tmp_path, arrays, {"rows": big.shape[0]}, layout_version="L1")
    got, meta, path = read_latest_snapshot(tmp_path, layout_version="L1")
    assert meta == {"rows": big.shape[0]}
    assert path.stat().st_size > 200_000_000
    for k in arrays:
        assert np.array_equal(got[k], arrays[k]), k


def test_extra_bytes_before_the_trailer_are_refused(tmp_path):
    write_snapshot(tmp_path, _small(1), {"n": 1}, layout_version="L1")
    newest = write_snapshot(tmp_path, _small(2), {"n": 2}, layout_version="L1")
    data = newest.read_bytes()
    newest.write_bytes(data[:-4] + bytes(16) + data[-4:])  # header crc still last
    assert read_latest_snapshot(tmp_path, layout_version="L1")[1] == {"n": 1}
