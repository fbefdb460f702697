"""One reused pinned host buffer for the small tables a GPU gather needs (run tables, offsets).

`put` copies a numpy array into the buffer and enqueues a non-blocking copy to the device, so a
call costs no pinned allocation and no host-blocking transfer. `done` records an event after the
work that reads the staged data; the buffer is only rewritten after that event has passed (the
next `put` waits for it, as does `wait`). One thread at a time per stager.
"""

from __future__ import annotations

import numpy as np
import torch


class PinnedStager:
    def __init__(self, initial_bytes: int = 1 << 20) -> None:
        self._initial = initial_bytes
        self._buffer: torch.Tensor | None = None  # [capacity] uint8, pinned
        self._cursor = 0
        self._event: torch.cuda.Event | None = None  # after the last reader of the buffer

    def wait(self) -> None:
        """Block until the work recorded by `done` (and every copy before it) has finished."""
        if self._event is not None:
            self._event.synchronize()
            self._event = None
            self._cursor = 0

    def put(self, array: np.ndarray, device: torch.device) -> torch.Tensor:
        """`array` (contiguous, any dtype) as a new tensor on `device`."""
        if self._event is not None:
            self.wait()
        array = np.ascontiguousarray(array)
        start = -(-self._cursor // 64) * 64  # 64-byte aligned slices
        end = start + array.nbytes
        if self._buffer is None or end > self._buffer.shape[0]:
            if self._cursor:  # earlier slices may still be in flight
                torch.cuda.current_stream(device).synchronize()
            start, end = 0, array.nbytes
            if self._buffer is None or end > self._buffer.shape[0]:
                size = max(self._initial, 1 << (max(end, 1) - 1).bit_length())
                self._buffer = torch.empty(size, dtype=torch.uint8, pin_memory=True)
        host = self._buffer[start:end]
        host.numpy()[:] = array.reshape(-1).view(np.uint8)
        self._cursor = end
        typed = host.view(_torch_dtype(array.dtype)).view(array.shape)
        return typed.to(device, non_blocking=True)

    def done(self, device: torch.device) -> None:
        """Mark the end of the work that reads what was staged since the last `done`/`wait`."""
        self._event = torch.cuda.Event()
        self._event.record(torch.cuda.current_stream(device))


def _torch_dtype(dt: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dt)).dtype
