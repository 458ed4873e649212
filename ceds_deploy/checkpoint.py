"""Checkpoint files: one format for training state and for inference, saved atomically and
loaded with `torch.load(weights_only=True)` so a checkpoint can never run code.

Payload keys: "format", "kind", "spec" (ModelSpec dict), "net_config" (CedsNetConfig dict),
"student" and "teacher" (state dicts), plus whatever training state the trainer adds (plain
containers of tensors, numbers and strings only).
"""

from __future__ import annotations

import hashlib
import io as _io
import os
import threading
from pathlib import Path
from typing import Any

from ceds_deploy.errors import ArtifactError
from ceds_deploy.spec import ModelSpec

CHECKPOINT_FORMAT = 1
CHECKPOINT_KIND = "ceds-checkpoint"
WEIGHT_CHOICES = ("teacher", "student")


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class FileDigest:
    """The SHA-256 of one file, kept while the file's size and modification time stay the same (a
    warm process does not hash a large model per folder run); `start()` begins it in a thread, so
    hashing overlaps loading the model (hashlib works outside the GIL)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._known: tuple[tuple[int, int], str] | None = None  # ((size, mtime_ns), digest)
        self._thread: threading.Thread | None = None

    def _state(self) -> tuple[int, int]:
        stat = self.path.stat()
        return stat.st_size, stat.st_mtime_ns

    def _compute(self) -> None:
        with self._lock:
            state = self._state()
            if self._known is None or self._known[0] != state:
                self._known = (state, sha256_of(self.path))

    def start(self) -> None:
        if self._thread is None and self.path.is_file():
            self._thread = threading.Thread(target=self._compute, name="ceds-model-digest", daemon=True)
            self._thread.start()

    def value(self) -> str:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._compute()  # no work when the file is as it was hashed
        assert self._known is not None
        return self._known[1]


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write `payload` to `path` atomically (temp file in the same folder, fsync, rename)."""
    import torch

    from ceds_deploy.io import write_atomic_bytes

    for key in ("spec", "net_config", "teacher"):
        if key not in payload:
            raise ValueError(f"checkpoint payload needs {key!r}")
    payload = {"format": CHECKPOINT_FORMAT, "kind": CHECKPOINT_KIND, **payload}
    buffer = _io.BytesIO()
    torch.save(payload, buffer)
    write_atomic_bytes(Path(path), buffer.getvalue())
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint safely; every problem is an `ArtifactError` naming the file. With `mmap`
    (a zip checkpoint, torch.save's format) tensors are mapped from the file, not read: only those
    used are ever read (the spec of a training checkpoint without its optimizer state); they are
    valid while the file exists, so copy the ones to keep."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: checkpoint file does not exist")
    is_zip = _check_checkpoint_bytes(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap and is_zip)
    except pickle.UnpicklingError as err:
        raise ArtifactError(
            f"{path}: refused to load: the checkpoint holds objects other than tensors "
            f"and plain data ({str(err).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise ArtifactError(
            f"{path}: not a readable PyTorch checkpoint (corrupt or truncated?): {str(err).splitlines()[0]}"
        ) from None
    if not isinstance(payload, dict) or payload.get("kind") != CHECKPOINT_KIND:
        raise ArtifactError(f"{path}: not a ceds-deploy checkpoint (no kind={CHECKPOINT_KIND!r} entry)")
    if int(payload.get("format", 0)) > CHECKPOINT_FORMAT:
        raise ArtifactError(
            f"{path}: checkpoint format {payload['format']} is newer than this install "
            f"reads ({CHECKPOINT_FORMAT}); upgrade ceds-deploy"
        )
    return payload


def _check_checkpoint_bytes(path: Path) -> bool:
    """An `ArtifactError` for a file that cannot be a PyTorch checkpoint at all: empty, or neither a
    zip archive (torch.save since 1.6) nor a legacy pickle; True for a zip archive."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as err:
        raise ArtifactError(f"{path}: cannot be read: {err.strerror or err}") from None
    if not head:
        raise ArtifactError(f"{path}: file is empty (0 bytes)")
    if head[:1] == b"\x08" and _looks_like_onnx(path):
        raise ArtifactError(f"{path}: is an ONNX model, not a PyTorch checkpoint; this needs the .pt checkpoint")
    if not head.startswith(b"PK\x03\x04") and head[:1] != b"\x80":
        raise ArtifactError(
            f"{path}: not a PyTorch checkpoint (random bytes?): it is neither a torch.save zip archive nor a pickle"
        )
    return head.startswith(b"PK\x03\x04")


def _looks_like_onnx(path: Path) -> bool:
    """An ONNX protobuf: field 1 (ir_version) first, then a producer's name early in the file."""
    with open(path, "rb") as fh:
        start = fh.read(256).lower()
    return any(name in start for name in (b"pytorch", b"ceds-deploy", b"onnx"))


def checkpoint_spec(payload: dict[str, Any], path: Path | str = "checkpoint") -> ModelSpec:
    if not isinstance(payload.get("spec"), dict):
        raise ArtifactError(f"{path}: checkpoint has no model spec")
    try:
        return ModelSpec.from_dict(payload["spec"])
    except ArtifactError as err:
        raise ArtifactError(f"{path}: {err}") from None


def spec_for_weights(spec: ModelSpec, weights: str) -> ModelSpec:
    """The spec of the `weights` network of a checkpoint: a calibration fitted for the other network
    does not hold for this one, so it is dropped (the raw confidence map)."""
    if spec.calibration is not None and weights != spec.weights:
        return spec.replace(weights=weights, calibration=None)
    return spec.replace(weights=weights)


def load_network(path: str | os.PathLike, weights: str = "teacher", map_location: str = "cpu"):
    """(CedsNet in eval mode, ModelSpec) from a checkpoint's teacher or student weights, on
    `map_location`: only those weights are read (the file is mapped) and copied straight to that
    device, into a network built without initialising its weights (random initialisation of the
    paper's width-16 network took 1.8 s on a CPU, for weights about to be replaced)."""
    import torch

    from ceds_deploy.network import CedsNet, CedsNetConfig

    if weights not in WEIGHT_CHOICES:
        raise ArtifactError(f"weights must be one of {WEIGHT_CHOICES}, got {weights!r}")
    path = Path(path)
    payload = load_checkpoint(path, "cpu", mmap=True)
    spec = checkpoint_spec(payload, path)
    if weights not in payload:
        raise ArtifactError(f"{path}: checkpoint holds no {weights} weights")
    try:
        config = CedsNetConfig(**payload["net_config"])
        state = {k: v.to(map_location, copy=True) for k, v in payload[weights].items()}
        with torch.device("meta"):
            net = CedsNet(config)
        net.load_state_dict(state, assign=True)  # strict: every parameter and buffer comes from the file
    except (TypeError, ValueError, KeyError, RuntimeError) as err:
        raise ArtifactError(
            f"{path}: weights do not fit the CEDS network (another architecture or width?): {_load_reason(err)}"
        ) from None
    return net.eval(), spec_for_weights(spec, weights)


def _load_reason(err: Exception) -> str:
    """One line of why weights did not load: torch's first named mismatch (a size, a missing or an
    unexpected key) rather than its heading, cut to 300 characters."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        lines = lines[1:]
    first = lines[0] if lines else type(err).__name__
    return first if len(first) <= 300 else first[:297] + "..."


def save_inference_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, weights: str = "teacher") -> Path:
    """Write a slim copy of checkpoint `src` to `dst`: only the `weights` network, the spec and the
    net config (no optimizer state, no other network, no history), in the same format, so
    `load_network(dst, weights)`, `ceds export` and `ceds segment` read it as they read `src`."""
    import torch

    from ceds_deploy.io import write_atomic_bytes

    if weights not in WEIGHT_CHOICES:
        raise ArtifactError(f"weights must be one of {WEIGHT_CHOICES}, got {weights!r}")
    src = Path(src)
    payload = load_checkpoint(src)
    spec = checkpoint_spec(payload, src)
    if weights not in payload or "net_config" not in payload:
        raise ArtifactError(f"{src}: checkpoint holds no {weights} weights or no net_config")
    slim = {
        "format": CHECKPOINT_FORMAT,
        "kind": CHECKPOINT_KIND,
        "spec": spec_for_weights(spec, weights).to_dict(),
        "net_config": dict(payload["net_config"]),
        weights: {k: v.clone() for k, v in payload[weights].items()},
    }  # own storage: no shared bytes saved
    buffer = _io.BytesIO()
    torch.save(slim, buffer)
    write_atomic_bytes(Path(dst), buffer.getvalue())
    return Path(dst)
