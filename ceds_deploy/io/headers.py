"""What a scan's header claims, checked before any voxel is allocated.

A header can claim any size: a 368-byte NIfTI may say 1024^3 voxels. Before ITK allocates, the
claim is held against the file (an uncompressed file must be at least that long; a gzip stream's
ISIZE trailer must match it, or a streaming count that keeps nothing must reach it; deflate
cannot expand more than `DEFLATE_MAX_RATIO` times) and against a memory budget per scan
(`MAX_SCAN_BYTES` of voxels as stored, and the stored voxels plus the returned array within
`MEMORY_FRACTION` of the machine's memory).
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ceds_deploy.errors import ScanError

MAX_SCAN_BYTES = 4 * 2**30  # voxels as stored: 2^31 int16 voxels, e.g. 1024 x 1024 x 2048
MEMORY_FRACTION = 0.5  # stored voxels + the returned array, of the machine's physical memory
DEFLATE_MAX_RATIO = 1032  # deflate's largest expansion (258-byte matches in ~2 bits)
_SLACK = 1 << 16  # compressed headers and framing
# NRRD and MetaImage fields that place the grid: ITK's parsers read "nan" in them as 0.
_GEOMETRY_FIELDS = {
    "offset",
    "origin",
    "position",
    "elementspacing",
    "elementsize",
    "transformmatrix",
    "rotation",
    "orientation",
    "centerofrotation",
    "space origin",
    "space directions",
    "spacings",
}


def _gib(n: int | float) -> str:
    return f"{n / 2**30:.2f} GiB"


def itk_reason(err: Exception) -> str:
    """What an ITK exception says is wrong, without file/line noise and object addresses; for NRRD
    with teem's reasons (the lines that name the field)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    detail = [ln.split(":", 1)[-1].strip() for ln in lines if ln.startswith("[nrrd]")]
    detail = [d for d in detail if d != "trouble" and not d.startswith("trouble reading")]
    for ln in reversed(lines):
        if re.match(r"(s?itk::)?error:|itk error:|description:", ln, re.IGNORECASE):
            reason = re.sub(r"^((s?itk::)?error:|itk error:|description:)\s*", "", ln, flags=re.IGNORECASE)
            reason = re.sub(r"^\w+\(0x[0-9a-f]+\):\s*", "", reason)  # ITK's object name and address
            return ": ".join([reason.rstrip(":"), *detail]) if detail else reason
    return lines[-1] if lines else type(err).__name__


def physical_memory() -> int | None:
    """Bytes of physical memory, or None where the system does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return None


def check_budget(path: object, size: tuple[int, ...], itemsize: int, out_itemsize: int, kind: str = "") -> None:
    """Raise `ScanError` when `size` voxels of `itemsize` bytes (plus the returned array of
    `out_itemsize` bytes a voxel) exceed the per-scan budget."""
    voxels = int(np.prod([int(n) for n in size], dtype=object))
    stored = voxels * itemsize
    claim = f"the header claims {'x'.join(map(str, size))} voxels{f' of {kind}' if kind else ''} ({_gib(stored)})"
    if stored > MAX_SCAN_BYTES:
        raise ScanError(path, f"{claim}, more than the {_gib(MAX_SCAN_BYTES)} a scan may take (MAX_SCAN_BYTES)")
    memory = physical_memory()
    needed = stored + voxels * out_itemsize
    if memory and needed > MEMORY_FRACTION * memory:
        raise ScanError(
            path,
            f"{claim}; reading it needs {_gib(needed)}, more than {MEMORY_FRACTION:.0%} of this "
            f"machine's {_gib(memory)} of memory",
        )


def gzip_holds_at_least(path: Path, expected: int, offset: int = 0) -> bool | None:
    """Whether the gzip data from `offset` to the end of `path` decompresses to at least `expected`
    bytes: True/False, None when it is not gzip. Decompresses in bounded pieces, keeping nothing,
    and stops as soon as `expected` is reached; several members and trailing zeros are allowed."""
    total = 0
    decompressor = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
    with open(path, "rb") as fh:
        fh.seek(offset)
        while chunk := fh.read(1 << 20):
            while chunk:
                if total >= expected:
                    return True
                if decompressor.eof:
                    if not chunk.strip(b"\0"):
                        break  # zero padding after the last member
                    decompressor = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
                try:
                    total += len(decompressor.decompress(chunk, 1 << 24))
                except zlib.error:
                    return None if total == 0 else total >= expected
                chunk = decompressor.unconsumed_tail or decompressor.unused_data
    return total >= expected


def check_gzip_claim(path: Path, expected: int, offset: int = 0) -> None:
    """Raise `ScanError` unless the gzip data of `path` from `offset` holds `expected` bytes: the
    size bound and the ISIZE trailer first, a streaming count only when the trailer differs
    (several members, over 4 GiB, or truncation)."""
    compressed = path.stat().st_size - offset
    if compressed * DEFLATE_MAX_RATIO + _SLACK < expected:
        raise ScanError(
            path,
            f"is truncated or its header is wrong: {compressed} bytes of compressed data cannot "
            f"hold the {expected} bytes ({_gib(expected)}) the header describes",
        )
    with open(path, "rb") as fh:
        fh.seek(-4, os.SEEK_END)
        isize = struct.unpack("<I", fh.read(4))[0]
    if isize == expected % (1 << 32):
        return
    if not gzip_holds_at_least(path, expected, offset):
        raise ScanError(
            path, f"is truncated: the compressed data ends before the image the header describes ({expected} bytes)"
        )


@dataclass
class NiftiClaim:
    """A NIfTI header as nibabel reads it: the image (proxy, no voxels), data offset and size."""

    image: Any
    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=object)) * self.dtype.itemsize

    @property
    def version(self) -> int:
        return 2 if type(self.image).__name__.startswith("Nifti2") else 1


def check_nifti_claim(path: Path, out_itemsize: int) -> NiftiClaim | None:
    """Check a NIfTI file's header claim before reading; None when nibabel cannot parse the header
    (ITK then says what is wrong). Raises `ScanError` for a claim the file cannot hold or that
    exceeds the budget."""
    import nibabel

    try:
        image: Any = nibabel.load(str(path))  # the header only; voxels stay on disk
        offset = int(getattr(image.dataobj, "offset", image.header["vox_offset"]))
        claim = NiftiClaim(
            image, offset, tuple(int(n) for n in image.header.get_data_shape()), np.dtype(image.header.get_data_dtype())
        )
    except Exception:  # noqa: BLE001 - not a NIfTI header nibabel can parse
        return None
    check_budget(path, claim.shape, claim.dtype.itemsize, out_itemsize, str(claim.dtype))
    expected = claim.offset + claim.nbytes
    if path.name.lower().endswith(".gz"):
        check_gzip_claim(path, expected)
    elif path.stat().st_size < expected:
        raise ScanError(path, f"is truncated: {path.stat().st_size} bytes, the header describes {expected}")
    return claim


def _text_header(path: Path) -> tuple[dict[str, str], int | None]:
    """The fields of a NRRD or MetaImage text header (keys lower-case) and where attached data
    starts (None when the header does not end within its first 64 KiB)."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    nrrd = head.startswith(b"NRRD")
    fields: dict[str, str] = {}
    position = 0
    for raw in head.splitlines(keepends=True):
        position += len(raw)
        line = raw.decode("latin-1").strip()
        if nrrd and not line:
            return fields, position  # a blank line ends a NRRD header
        key, sep, value = line.partition(":" if nrrd else "=")
        if sep and not line.startswith("#"):
            fields[key.strip().lower()] = value.lstrip("=").strip()
        if not nrrd and key.strip().lower() == "elementdatafile":
            return fields, position  # ElementDataFile ends a MetaImage header
    return fields, None


def _data_location(path: Path, fields: dict[str, str], offset: int | None) -> tuple[Path, int] | None:
    """(file, offset) of the voxels of a NRRD/MetaImage header, or None for lists and patterns."""
    name = fields.get("data file", fields.get("datafile", fields.get("elementdatafile", "LOCAL")))
    if name.upper() in ("LOCAL", "") and offset is not None:
        return path, offset
    if " " in name or "%" in name or name.upper().startswith("LIST") or name.upper() == "LOCAL":
        return None
    data = path.parent / name
    return (data, 0) if data.is_file() else None


def check_itk_claim(path: Path, out_itemsize: int) -> None:
    """Check a NRRD or MetaImage header's claim with ITK's header reader (no voxels read) before
    reading: the budget, and for raw, gzip and zlib-compressed data what the file can hold.
    Raises `ScanError`; a header ITK cannot parse raises it with ITK's reason."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise ScanError(
            path, f"cannot be read as an image (corrupt, truncated or not an image): {itk_reason(err)}"
        ) from None
    size = tuple(int(n) for n in reader.GetSize())
    pixel = sitk.GetArrayViewFromImage(sitk.Image([1] * len(size), reader.GetPixelID())).dtype
    itemsize = pixel.itemsize * max(1, reader.GetNumberOfComponents())
    check_budget(path, size, itemsize, out_itemsize, str(pixel))
    fields, offset = _text_header(path)
    for key in _GEOMETRY_FIELDS & set(fields):
        if re.search(r"(?<![a-z])(nan|inf(inity)?)(?![a-z])", fields[key], re.IGNORECASE):
            raise ScanError(
                path,
                f"header geometry is not usable: {key} is {fields[key]!r} (NaN or infinite; ITK would read it as 0)",
            )
    location = _data_location(path, fields, offset)
    if location is None:
        return
    data, start = location
    expected = int(np.prod(size, dtype=object)) * itemsize
    encoding = fields.get("encoding", "raw").lower()
    compressed = fields.get("compresseddata", "false").lower() == "true"
    held = data.stat().st_size - start
    if encoding in ("gzip", "gz"):
        check_gzip_claim(data, expected, start)
    elif compressed and held * DEFLATE_MAX_RATIO + _SLACK < expected:
        raise ScanError(
            path,
            f"is truncated or its header is wrong: {held} bytes of compressed data cannot "
            f"hold the {expected} bytes ({_gib(expected)}) the header describes",
        )
    elif encoding == "raw" and not compressed and held < expected:
        raise ScanError(path, f"is truncated: its data holds {held} bytes, the header describes {expected}")
