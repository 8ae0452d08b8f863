"""The one checkpoint opener: full, sharded and PEFT adapter directories; damaged files named in one line."""

import copy
import json

import pytest
import torch

from analysis.checkpoints import Opened, open_checkpoint, parse_device, parse_dtype
from analysis.data.items import Item
from analysis.errors import UsageError
from analysis.inputs import encode
from analysis.models import build_tiny, save_checkpoint


def _hidden(model, processor):
    batch = encode(processor, model, [Item("a red circle"), Item("two blue squares")])
    with torch.no_grad():
        return model.model(**batch.model_inputs("causal")).last_hidden_state


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model, processor = build_tiny("tiny-qwen2-vl", seed=3)
    path = save_checkpoint(model, processor, tmp_path_factory.mktemp("full") / "ckpt")
    return model, processor, path


def test_full_and_sharded_directories_open_to_the_same_weights(saved, tmp_path):
    model, processor, path = saved
    expected = _hidden(model, processor)
    assert torch.equal(_hidden(*_pair(open_checkpoint(path))), expected)
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="200KB")
    processor.save_pretrained(sharded)
    assert (sharded / "model.safetensors.index.json").is_file()
    assert torch.equal(_hidden(*_pair(open_checkpoint(sharded))), expected)


def _pair(opened):
    return opened.model, opened.processor


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_adapter_is_merged_and_equals_the_unmerged_peft_model(saved, tmp_path, use_dora):
    from peft import LoraConfig, get_peft_model

    model, processor, base = saved
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, use_dora=use_dora,
                                                                 target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.05)  # non-zero: merging must matter
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(base)
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    unmerged = _hidden(peft_model.base_model.model, processor)
    opened = open_checkpoint(adapter)
    assert opened.base == base
    assert not any("lora" in n for n, _ in opened.model.named_parameters())
    torch.testing.assert_close(_hidden(opened.model, opened.processor), unmerged, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(unmerged, _hidden(model, processor), atol=1e-4)


def test_adapter_without_a_reachable_base_says_how_to_give_it(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "Qwen/Qwen2-VL-2B-Instruct"}))
    with pytest.raises(UsageError, match="--base"):
        open_checkpoint(tmp_path)


def test_damaged_files_are_named(saved, tmp_path):
    model, processor, _ = saved
    path = save_checkpoint(model, processor, tmp_path / "ckpt")
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(UsageError, match="model.safetensors is truncated"):
        open_checkpoint(path)
    path = save_checkpoint(model, processor, tmp_path / "ckpt2")
    (path / "config.json").write_text("{not json")
    with pytest.raises(UsageError, match=r"config.json is not valid JSON"):
        open_checkpoint(path)
    with pytest.raises(UsageError, match="no checkpoint at"):
        open_checkpoint(tmp_path / "missing")


def test_dtype_and_device_names():
    assert parse_dtype("bfloat16") is torch.bfloat16 and parse_dtype(None) is None
    with pytest.raises(UsageError, match="valid: float32, float16, bfloat16"):
        parse_dtype("float99")
    assert parse_device(None) == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            parse_device("cuda")


@pytest.mark.parametrize("recipe, expected", [
    (None, False),                                                                     # not trained here
    ({"stages": {"contrastive": {"steps": 10}}}, False),
    ({"stages": {"bridged": {"steps": 10, "recon_weight": 0.5}}}, True),
    ({"stages": {"bridged": {"steps": 10, "recon_weight": 0.0}}}, False),               # stage 2 is InfoNCE only
    ({"stages": {"bridged": {"steps": 0}}}, False),                                    # stage 2 skipped
    ({"stages": {"bridged": {"steps": 10}}, "recon_weight": 0.0}, False),              # recipe.yaml before the move
    ({"stages": {"bridged": {"steps": 10}, "contrastive": None}, "recon_weight": 1.0}, True),
])
def test_whether_a_checkpoint_trained_with_reconstruction(recipe, expected):
    assert Opened(torch.nn.Linear(1, 1), None, "x", recipe=recipe).trained_with_reconstruction is expected
