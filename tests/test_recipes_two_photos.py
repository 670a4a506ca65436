"""The quick-start job end to end: the frozen SmolLM2 learns to answer from the visual memory."""

from __future__ import annotations

import pytest

from memvp.recipes.two_photos import DEFAULT_PAIRS, run_demo


@pytest.mark.slow  # the real SmolLM2 and EfficientNet-Lite0
def test_demo_learns_to_read_each_image(tmp_path):
    result = run_demo(tmp_path / "adapter", steps=30)
    targets = [answer.rstrip(".") for _, answer in DEFAULT_PAIRS]
    assert [a.rstrip(".") for a in result["after"]] == targets
    assert result["before"][0] == result["before"][1]  # untrained: same text, same answer
    assert result["after_reload"] == result["after"]
    assert result["loss_swapped"] > 20 * result["loss"]  # the answer depends on the image
    assert (tmp_path / "adapter" / "memvp_config.json").is_file()
