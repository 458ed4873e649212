"""Scan-sized arrays on plain 4 KiB pages.

numpy asks the kernel for transparent huge pages for every array of 4 MiB or more. On a virtual
machine (this project's CPU machine kind) the first touch of a huge page varies widely: restoring a
315 MB float32 confidence map in a fresh process took 0.11-0.41 s (median 0.20) on huge pages
against a steady 0.16-0.19 s on small ones (benchmarks/results/fresh_memory.json), and a cold run
touches every scan-sized array for the first time. The arrays a run makes once per scan (the read
voxels, the restored mask and confidence map) come from here: an anonymous mapping, zeroed by the
kernel page by page as it is first written (a mask's untouched pages are never allocated), returned
when the array is freed.
"""

from __future__ import annotations

import mmap

import numpy as np
import numpy.typing as npt


def fresh_zeros(shape: tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
    """A C-ordered array of zeros of `shape` and `dtype` on 4 KiB pages: the kernel zeroes each page
    as it is first written, and callers may count on the zeros (a zero fill need write nothing)."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    nbytes = count * dtype.itemsize
    if nbytes < mmap.PAGESIZE:
        return np.zeros(shape, dtype)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype, count=count).reshape(shape)
