# Regenerate the golden outputs of tests/test_methods_memvp_golden.py: `.venv/bin/python tests/data/golden/make_golden.py [family ...]`
"""Writes tests/data/golden/<family>_<scale>.pt (every case, or those of the families named).

Only for an intended change of MemVP's numbers: the files pin the outputs of the code that
wrote them, so a refactor that is meant to change nothing must pass against the old files.
Runs on the CPU in float32, as the test does; say in the commit why the numbers changed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(TESTS))  # conftest (the tiny models) and the golden test (the cases)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from test_methods_memvp_golden import CASES, FAMILIES, compute_case, golden_path  # noqa: E402


def main(families: list[str]) -> None:
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise SystemExit(f"unknown families {unknown}; known: {list(FAMILIES)}")
    for family, scale in CASES:
        if families and family not in families:
            continue
        out = compute_case(family, scale)
        path = golden_path(family, scale)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(out, path)
        diff = out["memory_delta"].abs().max().item()
        print(f"{path.name}: {path.stat().st_size} bytes, {int(out['trainable'])} trainable, "
              f"max |memvp - lm| = {diff:.3g}")


if __name__ == "__main__":
    main(sys.argv[1:])
