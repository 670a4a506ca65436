"""Peak memory of a block of work (memvp bench, training runs with measure_memory)."""

from __future__ import annotations

import pytest
import torch

from memvp.peak_memory import PeakMemory


@pytest.mark.parametrize("tune_glibc", [False, True])  # False (training runs) first: True is for the process
def test_peak_memory_sees_a_temporary_allocation(tune_glibc):
    memory = PeakMemory(torch.device("cpu"), tune_glibc=tune_glibc)
    if not memory.available:  # not Linux/glibc: the benchmark reports n/a instead
        assert memory.measure(lambda: None) is None
        return
    size = 64 * 2**20

    def work():
        x = torch.ones(size // 4)  # 64 MiB, freed before measure() returns
        assert x.sum() > 0

    peak = memory.measure(work)
    assert 0.9 * size < peak < 1.5 * size
