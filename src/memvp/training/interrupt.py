"""Ctrl-C and SIGTERM during training: finish the step, checkpoint it, stop with a way to resume."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by ``train`` on SIGINT / SIGTERM once the checkpoint of the step just finished is written
    (a KeyboardInterrupt, so code that stops on Ctrl-C still does)."""

    def __init__(self, signal_name: str, step: int, total_steps: int, checkpoint: Path):
        self.signal_name, self.step, self.total_steps, self.checkpoint = signal_name, step, total_steps, checkpoint
        super().__init__(f"{signal_name} after step {step} of {total_steps}; saved {checkpoint}")


@contextlib.contextmanager
def stop_signals():
    """SIGINT / SIGTERM set a flag that the loop reads between steps (a step is never cut in half); a
    second signal stops at once, as Ctrl-C normally does. Yields the list of signals received."""
    import signal
    import threading

    received: list[str] = []
    if threading.current_thread() is not threading.main_thread():  # handlers live in the main thread
        yield received
        return

    def handler(signum, frame):
        if received:
            raise KeyboardInterrupt
        received.append(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def stop_requested(received: list[str], accelerator) -> str | None:
    """The signal any process received (all processes must stop at the same step to checkpoint)."""
    if accelerator.num_processes == 1:
        return received[0] if received else None
    flags = accelerator.gather(torch.tensor([1 if received else 0], device=accelerator.device))
    return (received[0] if received else "SIGTERM") if bool(flags.any()) else None


__all__ = ["TrainingInterrupted", "stop_signals", "stop_requested"]
