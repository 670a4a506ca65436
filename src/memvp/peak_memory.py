"""Peak memory of a block of work (one training step): CUDA ``max_memory_allocated``; on CPU the
peak resident set size above the start (Linux: VmHWM reset through /proc/self/clear_refs, after
``malloc_trim`` has handed the heap's free pages back, so that the block's allocations show as new
pages). ``memvp bench`` also tells glibc to return freed tensors at once (``tune_glibc``), which
makes RSS follow the live tensors closely but turns every allocation of 64 KiB or more into an
mmap with fresh page faults for the rest of the process: training runs (``measure_memory``) do not
tune, so the measurement leaves their speed alone."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import re
import sys
from pathlib import Path

import torch


class PeakMemory:
    """Peak memory of a block of work, in bytes above what was in use when it started."""

    _glibc_tuned = False

    def __init__(self, device: torch.device, tune_glibc: bool = True):
        self.device = device
        self._libc = None
        if device.type == "cpu" and sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                self._libc = ctypes.CDLL("libc.so.6")
                if tune_glibc and not PeakMemory._glibc_tuned:
                    # M_MMAP_THRESHOLD = -3, M_TRIM_THRESHOLD = -1: big blocks are mmapped and freed to
                    # the OS at once (a fixed threshold also stops glibc from raising it dynamically).
                    self._libc.mallopt(-3, 64 * 1024)
                    self._libc.mallopt(-1, 64 * 1024)
                    PeakMemory._glibc_tuned = True

    @property
    def available(self) -> bool:
        return self.device.type == "cuda" or (self._libc is not None and Path("/proc/self/clear_refs").exists())

    @staticmethod
    def _status(key: str) -> int:
        text = Path("/proc/self/status").read_text()
        return int(re.search(rf"{key}:\s+(\d+) kB", text).group(1)) * 1024

    def measure(self, fn) -> int | None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            start = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            fn()
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - start
        if not self.available:
            return None
        try:
            self._libc.malloc_trim(0)  # free heap pages back to the OS: reusing them shows in RSS
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            start = self._status("VmRSS")
        except (OSError, AttributeError):  # clear_refs not writable (some sandboxes): no reading
            fn()
            return None
        fn()
        return self._status("VmHWM") - start


__all__ = ["PeakMemory"]
