"""The first scans decompressed while the process starts (io/prefetch.py): the same volume, taken
once, never stale, never an error of its own."""

from __future__ import annotations

import gzip
import os
import time

import numpy as np
import pytest

from ceds_deploy.errors import ScanError
from ceds_deploy.io import prefetch, read_scan, write_volume
from ceds_deploy.volume import Geometry


@pytest.fixture(autouse=True)
def _nothing_left_prefetched():
    yield
    prefetch.release_prefetched()


def _scan(path, seed: int = 0, shape=(20, 18, 12)):
    rng = np.random.default_rng(seed)
    array = rng.integers(-1000, 1000, size=shape).astype(np.int16)
    geometry = Geometry((0.8, 0.9, 2.5), (10.0, -5.0, 3.0), np.eye(3), shape)
    write_volume(path, array, geometry)
    _scan.array = array  # type: ignore[attr-defined]  # what was written last
    return path


def test_a_prefetched_scan_reads_as_the_file_does(tmp_path):
    path = _scan(tmp_path / "a.nii.gz")
    plain = read_scan(path, dtype=None)
    prefetch.prefetch_gzip(path)
    fetched = read_scan(path, dtype=None)
    assert np.array_equal(fetched.array, plain.array) and fetched.array.dtype == np.int16
    assert fetched.geometry.same_grid(plain.geometry, atol=0)
    assert fetched.array.flags.writeable  # a view of the prefetched bytes is copied, never handed out
    assert prefetch.take_prefetched(path) is None  # taken once


def test_a_file_changed_since_is_read_again(tmp_path):
    path = _scan(tmp_path / "a.nii.gz", seed=1)
    prefetch.prefetch_gzip(path)
    time.sleep(0.01)
    _scan(path, seed=2)  # the same shape, other voxels
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert np.array_equal(read_scan(path, dtype=None).array, _scan.array)  # type: ignore[attr-defined]


def test_a_broken_file_prefetched_fails_as_it_would_unprefetched(tmp_path):
    path = tmp_path / "broken.nii.gz"
    good = gzip.decompress(_scan(tmp_path / "good.nii.gz").read_bytes())
    path.write_bytes(gzip.compress(good)[: len(good) // 4])  # truncated
    prefetch.prefetch_gzip(path)
    with pytest.raises(ScanError, match="broken.nii.gz"):
        read_scan(path)


def test_the_first_scans_of_a_folder_and_release(tmp_path):
    (tmp_path / ".hidden.nii.gz").write_bytes(b"x")
    third = _scan(tmp_path / "c.nii.gz")
    second = _scan(tmp_path / "b.nii.gz")
    first = _scan(tmp_path / "a.nii.gz")
    assert prefetch.first_scans_to_prefetch(tmp_path) == [first, second][: prefetch.PREFETCH_SCANS]
    assert prefetch.first_scans_to_prefetch(tmp_path, count=3) == [first, second, third]
    assert prefetch.first_scans_to_prefetch(first) == [first]
    (tmp_path / "0.mha").write_bytes(b"x")  # not gzipped NIfTI: not prefetched, and it is read first
    assert prefetch.first_scans_to_prefetch(tmp_path, count=2) == [first]
    assert prefetch.first_scans_to_prefetch(tmp_path / "missing") == []
    prefetch.prefetch_gzip(first, second)
    prefetch.release_prefetched(keep=[second, third])  # the run reads other scans first: first dropped
    assert prefetch.take_prefetched(first) is None
    data = prefetch.take_prefetched(second)
    assert data is not None and data.flags.writeable and bytes(data) == gzip.decompress(second.read_bytes())
    prefetch.prefetch_gzip(first)
    prefetch.release_prefetched(keep=[first])
    assert prefetch.take_prefetched(first) is not None


def test_a_released_scan_is_never_decompressed(tmp_path, monkeypatch):
    """A scan released before the thread reaches it costs nothing: the thread skips it."""
    import threading

    first, second = _scan(tmp_path / "a.nii.gz"), _scan(tmp_path / "b.nii.gz")
    started, go = threading.Event(), threading.Event()
    decompressed = []
    real = prefetch._decompress

    def slow_first(path, igzip):
        if path == first:
            started.set()
            go.wait(10)
        decompressed.append(path)
        return real(path, igzip)

    monkeypatch.setattr(prefetch, "_decompress", slow_first)
    prefetch.prefetch_gzip(first, second)
    assert started.wait(10)
    prefetch.release_prefetched(keep=[first])  # second dropped while the thread is on first
    go.set()
    assert prefetch.take_prefetched(first) is not None  # waits for it
    for thread in [t for t in threading.enumerate() if t.name == "ceds-prefetch"]:
        thread.join(10)
    assert decompressed == [first] and prefetch.take_prefetched(second) is None


def test_the_scans_prefetched_together_hold_a_bounded_amount(tmp_path, monkeypatch):
    first, second = _scan(tmp_path / "a.nii.gz"), _scan(tmp_path / "b.nii.gz", seed=1)
    monkeypatch.setattr(prefetch, "MAX_COMPRESSED_BYTES", first.stat().st_size + second.stat().st_size - 1)
    prefetch.prefetch_gzip(first, second)
    assert prefetch.take_prefetched(first) is not None
    assert prefetch.take_prefetched(second) is None  # over the bound together: read as usual
