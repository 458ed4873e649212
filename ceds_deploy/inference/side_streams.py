"""CUDA streams of the pipeline's reader and writer threads.

On one stream, a reader's pre-processing and a writer's restore queue behind the network's batches,
and every synchronisation in them (a `nonzero`, a copy to the host) waits for all the batches the
backend has queued: a case's pre-processing took 0.6 s beside the network against 0.03 s alone
(benchmarks/results/gpu_check_h200.json). Each reader and writer thread therefore works on a stream
of its own, beside the network's:

- a reader's work is finished (its stream synchronised) before the case is handed to the backend,
  and the backend's stream records its use of the image, so the allocator never hands the image's
  memory to a reader while a batch may still read it;
- a writer's stream waits for the event recorded when the case's last window was stitched, and
  records its use of the stitched outputs likewise.

On the CPU every step here does nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ceds_deploy.backends.base import is_cuda


class SideStreams:
    """One CUDA stream per thread that asks, on `device`; nothing on the CPU."""

    def __init__(self, device: Any) -> None:
        self.device = torch.device(device) if is_cuda(str(device)) else None
        self._local = threading.local()

    def _stream(self) -> torch.cuda.Stream:
        stream = getattr(self._local, "stream", None)
        if stream is None:
            stream = self._local.stream = torch.cuda.Stream(self.device)
        return stream

    @contextmanager
    def reading(self) -> Iterator[None]:
        """A reader's GPU work, on its own stream, finished when the block ends."""
        if self.device is None:
            yield
            return
        stream = self._stream()
        with torch.cuda.stream(stream):
            yield
        stream.synchronize()

    def taken(self, image: Any) -> None:
        """The backend's thread starts using a reader's `image`: its memory waits for that stream."""
        if self.device is not None and isinstance(image, torch.Tensor) and image.is_cuda:
            image.record_stream(torch.cuda.current_stream(self.device))

    def stitched(self) -> torch.cuda.Event | None:
        """An event on the backend's stream after a case's last window (None on the CPU)."""
        if self.device is None:
            return None
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        return event

    @contextmanager
    def writing(self, ready: torch.cuda.Event | None, *outputs: Any) -> Iterator[None]:
        """A writer's GPU work on `outputs` (the stitched tensors), on its own stream, after `ready`."""
        if self.device is None or ready is None:
            yield
            return
        stream = self._stream()
        stream.wait_event(ready)
        for tensor in outputs:
            if isinstance(tensor, torch.Tensor) and tensor.is_cuda:
                tensor.record_stream(stream)
        with torch.cuda.stream(stream):
            yield
        stream.synchronize()
