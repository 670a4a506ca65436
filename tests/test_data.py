"""memvp.data: prompt/answer encoding (mirrors src/memvp/data.py)."""

from __future__ import annotations

from memvp.data import encode_sample
from memvp.datasets import Sample


class BosTokenizer:
    """A Llama-like tokenizer: BOS (1) first, then one id per word (words are numbers here)."""

    all_special_ids = [0, 1, 2]
    eos_token_id = 2

    def __call__(self, text, add_special_tokens=True):
        ids = [int(w) for w in text.split()]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}


def test_left_truncation_keeps_the_bos_token():
    """Issue 12.9: cutting the prompt's start dropped BOS."""
    sample = Sample(id="s", prompt=" ".join(str(i) for i in range(10, 30)), answers=["7"])
    enc = encode_sample(BosTokenizer(), sample, max_length=8, template="{prompt}")
    assert enc.answer_ids == [7, 2]
    assert enc.prompt_ids == [1, 25, 26, 27, 28, 29] and enc.truncated == 15
    short = encode_sample(BosTokenizer(), Sample(id="t", prompt="10 11", answers=["7"]), 8, "{prompt}")
    assert short.prompt_ids == [1, 10, 11] and short.truncated == 0
