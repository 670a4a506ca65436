"""The methods registry: one path from a method name to its config and model, for building,
checking, saving and loading; a newly registered method works through the same path."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from memvp import MemVPConfig, MemVPModel
from memvp.methods import METHODS, Method, build_model, check_adapter, get_method, load_adapter, register_method
from memvp.methods.input_space import BaselineConfig, InputSpaceModel
from memvp.training import TrainConfig


def test_every_method_builds_from_its_own_section():
    options = {"memvp": {"num_entries": 6}, "baseline": {"lora_r": 2}}
    memvp = build_model("memvp", tiny_model("llama"), 8, **options)
    assert isinstance(memvp, MemVPModel) and memvp.memvp_config.num_entries == 6 and memvp.visual_dim == 8
    for name in ("input_space", "text_only"):
        model = build_model(name, tiny_model("llama"), 8, **options)
        assert isinstance(model, InputSpaceModel) and model.baseline_config.method == name
        assert model.baseline_config.lora_r == 2
        assert model.visual_dim == (8 if name == "input_space" else None)
    assert not get_method("text_only").reads_images and get_method("memvp").reads_images
    with pytest.raises(ValueError, match="method must be one of \\['memvp', 'memvp_lora', 'input_space', 'text_only'"):
        get_method("llava")


def test_a_registered_method_trains_saves_and_loads_through_the_registry(tmp_path):
    """The Table 4 'keys only' ablation as a method of its own: registered once, usable everywhere."""
    register_method(Method("memvp_keys", MemVPConfig, MemVPModel, section="memvp", fixed={"insert_into": "keys"}))
    try:
        model = build_model("memvp_keys", tiny_model("llama"), 8, memvp={"num_entries": 4})
        assert model.memvp_config.insert_into == "keys"
        assert TrainConfig(method="memvp_keys").use_images  # the training config accepts it
        with torch.no_grad():
            model.visual_memory.output_gate.fill_(1.0)  # the zero-initialised gate would hide the memory
        model.eval().save_pretrained(tmp_path / "a")
        check_adapter(tmp_path / "a")
        loaded = load_adapter(tiny_model("llama"), tmp_path / "a")
        ids, feats = torch.randint(3, 64, (1, 5)), torch.randn(1, 4, 8)
        with torch.no_grad():
            torch.testing.assert_close(
                loaded(input_ids=ids, visual_features=feats).logits, model(input_ids=ids, visual_features=feats).logits
            )
        with pytest.raises(ValueError, match="Unknown MemVPConfig key"):
            TrainConfig(method="memvp_keys", memvp={"entries": 3})
    finally:
        METHODS.pop("memvp_keys")


def test_options_of_the_wrong_section_fail_before_any_model():
    with pytest.raises(ValueError, match="Unknown BaselineConfig key\\(s\\) \\['num_entries'\\]"):
        TrainConfig(method="input_space", baseline={"num_entries": 4})
    with pytest.raises(ValueError, match="Unknown MemVPConfig key\\(s\\) \\['lora_r'\\]"):
        TrainConfig(memvp={"lora_r": 4})
    assert get_method("input_space").make_config(5, {"lora_r": 3}) == BaselineConfig(
        method="input_space", visual_dim=5, lora_r=3
    )


def test_an_adapter_directory_is_recognised_by_its_files(tmp_path):
    build_model("text_only", tiny_model("llama"), 8).save_pretrained(tmp_path / "t")
    build_model("memvp", tiny_model("llama"), 8, memvp={"num_entries": 4}).save_pretrained(tmp_path / "m")
    assert isinstance(load_adapter(tiny_model("llama"), tmp_path / "t"), InputSpaceModel)
    assert isinstance(load_adapter(tiny_model("llama"), tmp_path / "m"), MemVPModel)
    with pytest.raises(
        FileNotFoundError,
        match="holds no adapter: expected memvp_config.json \\(MemVPModel\\) or "
        "memvp_lora_config.json \\(MemVPLoraModel\\) or "
        "baseline_config.json \\(InputSpaceModel\\)",
    ):
        check_adapter(tmp_path)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_model_offers_what_the_library_asks_of_it(method):
    """Training, bench, flops, explain and serve read these capabilities, never the method's name."""
    from memvp.methods.base import MethodModelProtocol

    model = build_model(method, tiny_model("llama"), visual_dim=8, num_visual_tokens=4, adem={"scales": [1]})
    assert isinstance(model, MethodModelProtocol)
    assert model.method_name == method
    assert model.reads_images == get_method(method).reads_images
    assert model.supports_probing == (method in ("memvp", "memvp_lora"))
    text = model.analytic_layer_flops(10, 32, 0)
    assert text == 4 * 10 * 32 * (6 * 32 + 10) or method == "adem"  # eq. 13 without visual tokens
    assert model.analytic_layer_flops(10, 32, 4) >= text


@pytest.mark.parametrize("method", ["memvp", "memvp_lora"])
def test_memvp_holds_one_entry_per_visual_token_unless_told(method):
    # padding entries (position embeddings only) would take most of the retrieval weight
    lm = tiny_model("llama")
    assert build_model(method, lm, visual_dim=8, num_visual_tokens=49).memvp_config.num_entries == 49
    told = build_model(method, tiny_model("llama"), visual_dim=8, num_visual_tokens=49, memvp={"num_entries": 64})
    assert told.memvp_config.num_entries == 64
    assert (
        build_model(method, tiny_model("llama"), visual_dim=8).memvp_config.num_entries == 256
    )  # no encoder to size by
