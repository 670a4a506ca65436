"""memvp.inputs: prompt/answer encoding (mirrors src/memvp/inputs.py)."""

from __future__ import annotations

from memvp.datasets import Sample
from memvp.inputs import encode_sample


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


def _byte_tokenizer(chat_template: str | None):
    """Byte-level BPE without merges: one token per byte, exact round trip, <s> / </s> specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", *sorted(byte_chars)])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.chat_template = chat_template
    return fast


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CONVERSATION = Sample(
    id="c",
    prompt="And the size?",
    answers=["Small."],
    metadata={"history": [["What shape is it?", "A square."], ["Which colour?", "Red."]]},
)


def _labelled_text(tok, enc) -> list[str]:
    """The decoded runs of labelled tokens (prompt labels, then the answer)."""
    labels = (enc.prompt_labels or [-100] * len(enc.prompt_ids)) + enc.answer_ids
    runs, current = [], []
    for t in labels + [-100]:
        if t == -100 and current:
            runs.append(tok.decode(current))
            current = []
        elif t != -100:
            current.append(t)
    return runs


def test_chat_template_labels_every_assistant_turn():
    from memvp.inputs import CHAT, collate_training

    tok = _byte_tokenizer(CHATML)
    enc = encode_sample(tok, CONVERSATION, max_length=512, template=CHAT)
    full = tok.decode(enc.prompt_ids + enc.answer_ids)
    assert full == tok.apply_chat_template(
        [
            {"role": r, "content": c}
            for u, a in [*CONVERSATION.metadata["history"], ["And the size?", "Small."]]
            for r, c in (("user", u), ("assistant", a))
        ],
        tokenize=False,
    )
    assert _labelled_text(tok, enc) == ["A square.<|im_end|>\n", "Red.<|im_end|>\n", "Small.<|im_end|>\n"]
    # The generation prompt is the training sequence up to the last answer.
    prompt = encode_sample(tok, CONVERSATION, max_length=512, template=CHAT, with_answer=False)
    assert prompt.prompt_ids == enc.prompt_ids and prompt.answer_ids == [] and prompt.prompt_labels is not None
    assert tok.decode(prompt.prompt_ids).endswith("And the size?<|im_end|>\n<|im_start|>assistant\n")
    batch = collate_training(tok, [enc, encode_sample(tok, Sample(id="s", prompt="Hi", answers=["Yo"]), 64, CHAT)])
    row = batch["labels"][0]
    assert row[row != -100].tolist() == [t for t in (enc.prompt_labels + enc.answer_ids) if t != -100]
    assert tok.decode(batch["labels"][1][batch["labels"][1] != -100]) == "Yo<|im_end|>\n"
    # Left truncation cuts the oldest turns, and their labels with them.
    cut = encode_sample(tok, CONVERSATION, max_length=len(enc.prompt_ids) + len(enc.answer_ids) - 40, template=CHAT)
    assert cut.truncated == 40 and _labelled_text(tok, cut)[-2:] == ["Red.<|im_end|>\n", "Small.<|im_end|>\n"]


def test_vicuna_v1_without_a_chat_template():
    from memvp.inputs import CHAT, VICUNA_SYSTEM

    tok = _byte_tokenizer(None)
    enc = encode_sample(tok, CONVERSATION, max_length=512, template=CHAT)
    assert tok.decode(enc.prompt_ids + enc.answer_ids) == (  # BOS only where the tokenizer adds one (not here)
        f"{VICUNA_SYSTEM} USER: What shape is it? ASSISTANT: A square.</s> USER: Which colour? ASSISTANT: Red.</s>"
        " USER: And the size? ASSISTANT: Small.</s>"
    )
    assert _labelled_text(tok, enc) == [" A square.</s>", " Red.</s>", " Small.</s>"]


def _metaspace_tokenizer():
    """A SentencePiece-like (LLaMA) word tokenizer: words keep a leading "▁" where a space was, the
    first word of a string gets one too, so a word reads differently at the start of a string."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [
        "<unk>",
        "<s>",
        "</s>",
        "▁Question:",
        "▁Q?",
        "▁Response:",
        "▁Response:The",
        "▁The",
        "▁answer",
        "▁is",
        "▁B.",
        "▁B",
    ]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def test_the_answer_is_tokenized_after_the_prompt_as_the_official_code():
    """ScienceQA's official example is tokenize("...Response:The answer is B.") with the labels after the
    prompt's own tokens: the answer's first word reads as it does inside the example, not alone."""
    tok = _metaspace_tokenizer()
    sample = Sample(
        id="s",
        prompt="Question: Q?\nResponse:",
        answers=["B"],
        answer_separator="",
        answer_prefix="The answer is",
        metadata={"target": "The answer is B."},
    )
    enc = encode_sample(tok, sample, max_length=32, template="{prompt}")
    example = tok("Question: Q?\nResponse:The answer is B.")["input_ids"]
    assert enc.prompt_ids + enc.answer_ids == example + [tok.eos_token_id]
    assert enc.prompt_ids == tok("Question: Q?\nResponse:")["input_ids"]
    alone = tok("The answer is B.", add_special_tokens=False)["input_ids"]
    assert alone != enc.answer_ids[:-1]  # tokenized on its own, "The" would read as "▁The"
    # generation: the prompt ends with the answers' shared start; the model writes the letter
    prompt = encode_sample(tok, sample, max_length=32, template="{prompt}", with_answer=False)
    assert prompt.prompt_ids == tok("Question: Q?\nResponse:The answer is")["input_ids"] and prompt.answer_ids == []


def test_a_token_across_the_join_falls_back_to_the_answer_alone():
    tok = _metaspace_tokenizer()  # "Response:" + "The" -> one word "▁Response:The": no prefix to split at
    sample = Sample(id="s", prompt="Response:", answers=["B"], answer_separator="", metadata={"target": "The"})
    enc = encode_sample(tok, sample, max_length=32, template="{prompt}")
    assert enc.prompt_ids == tok("Response:")["input_ids"]
    assert enc.answer_ids == tok("The", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def test_asked_entries_are_each_samples_box_coverage_on_the_encoders_grid(tmp_path):
    import torch
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    from memvp.inputs import VisualInputs
    from memvp.vision import HFVisionEncoder, PrecomputedFeatures, box_coverage

    vit = dict(hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2)
    clip = HFVisionEncoder(
        CLIPVisionModel(CLIPVisionConfig(**vit, image_size=16, patch_size=4)),  # a 4 x 4 grid
        CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}),
    )
    wide, tall = tmp_path / "wide.png", tmp_path / "tall.png"
    Image.new("RGB", (32, 16)).save(wide)
    Image.new("RGB", (16, 48)).save(tall)
    boxed = Sample(id="0", prompt="q", answers=["a"], image=str(wide), metadata={"asked_box": (0.25, 0, 0.5, 0.5)})
    tall_boxed = Sample(id="1", prompt="q", answers=["a"], image=str(tall), metadata={"asked_box": (0, 0.5, 1, 1)})
    plain = Sample(id="2", prompt="q", answers=["a"], image=str(wide))
    visual = VisualInputs(clip, str(tmp_path / "cache"))
    got = visual.asked_entries([boxed, plain, tall_boxed])
    assert got.shape == (3, 16) and not got[1].any()
    assert torch.equal(got[0], box_coverage(clip, boxed.metadata["asked_box"], 32, 16))  # the image's own size
    assert torch.equal(got[2], box_coverage(clip, tall_boxed.metadata["asked_box"], 16, 48))
    assert got[0].reshape(4, 4)[:2, :2].eq(1).all() and got[0].sum() == 4  # x 8..16 of the 16-px crop, top half
    assert visual.asked_entries([plain]) is None  # nobody asks about one object
    assert VisualInputs(PrecomputedFeatures(8, 16), str(tmp_path / "c2")).asked_entries([boxed]) is None
