"""Host <-> GPU copies for a CUDA server: pinned staging, one side stream each way.

Received tiles go host-to-device on the ``h2d`` stream (the compute stream waits on an
event before a task reads them); produced pieces go device-to-host on the ``d2h``
stream into pinned buffers, so copies overlap compute in both directions.
Only used when a server runs with ``--device cuda``.
"""

from __future__ import annotations

import torch

__all__ = ["DeviceCopier"]


class DeviceCopier:
    """Asynchronous copies between pinned host memory and one CUDA device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.h2d = torch.cuda.Stream(device)
        self.d2h = torch.cuda.Stream(device)

    def to_device(self, host: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event]:
        """Start copying ``host`` to the device; the event marks the copy's end."""
        pinned = host if host.is_pinned() else host.pin_memory()
        with torch.cuda.stream(self.h2d):
            dev = pinned.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.h2d)
        return dev, done

    def wait(self, event: torch.cuda.Event, tensor: torch.Tensor) -> None:
        """Make the compute stream wait for ``event`` before it reads ``tensor``."""
        stream = torch.cuda.current_stream(self.device)
        stream.wait_event(event)
        tensor.record_stream(stream)  # its memory is not reused before compute is done

    def to_host(self, dev: torch.Tensor) -> torch.Tensor:
        """Copy ``dev`` (just computed) into a pinned host tensor; returns once copied."""
        produced = torch.cuda.Event()
        produced.record(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.d2h):
            self.d2h.wait_event(produced)
            host = torch.empty(dev.shape, dtype=dev.dtype, pin_memory=True)
            host.copy_(dev, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.d2h)
        dev.record_stream(self.d2h)
        done.synchronize()
        return host
