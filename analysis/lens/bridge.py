"""Boot a TransformerLens `TransformerBridge` around a loaded Qwen2-VL / Qwen2.5-VL model.

Booting wraps the model's modules IN PLACE: afterwards that model object runs through the bridge's
components, and its own `output_attentions` is wrong from layer 1 on (its hidden states stay right).
So `boot` deep-copies the model by default and leaves the caller's object untouched. The copy costs
one more set of weights (+4.4 GB for a 2B model in bf16, +15 GB for 7B); pass `copy=False` to hand
the model over instead when memory is tight, and use `bridge.original_model` from then on.

TransformerLens forces eager attention when booting, so that `hook_pattern` fires; `boot` then sets the
attention implementation asked for (a runtime switch): eager for full patterns, sdpa for a forward at the
cost of a plain one (`analysis.lens.pattern_rows` computes the pattern rows a capture keeps without eager).
"""

from __future__ import annotations

import copy as copy_module
import difflib
import tempfile
from typing import Iterable

import torch
from transformer_lens.model_bridge import TransformerBridge

from analysis.errors import UnknownName
from analysis.lens.qwen2_vl_adapter import register
from analysis.models import MODEL_CLASSES


def boot(model: torch.nn.Module, processor, *, copy: bool = True,
         attn_implementation: str = "eager") -> TransformerBridge:
    """`TransformerBridge` over `model` running `attn_implementation` (weights as they are; nothing downloaded).

    `processor` is the checkpoint's processor (or its tokenizer). With `copy=True` the bridge wraps a
    deep copy, so `model` stays a plain, correct Hugging Face model.
    """
    if not isinstance(model, tuple(MODEL_CLASSES.values())):
        raise TypeError(f"cannot bridge a {type(model).__name__}: cocoa-lens captures "
                        f"{', '.join(c.__name__ for c in MODEL_CLASSES.values())} models")
    register()
    model = copy_module.deepcopy(model) if copy else model
    if not model.config.architectures:  # a model built from a config may lack it; TL selects on it
        model.config.architectures = [type(model).__name__]
    # TransformerLens edits the tokenizer it gets, and reloads one that has a BOS token by its name (from
    # the hub, for an in-memory one); ours never tokenises text, so it gets a BOS-free copy.
    tokenizer = copy_module.deepcopy(getattr(processor, "tokenizer", processor))
    tokenizer.bos_token = None
    # TransformerLens looks for a processor under the model name; an empty local directory keeps that
    # best-effort lookup offline (it would otherwise ask the hub).
    with tempfile.TemporaryDirectory(prefix="cocoa-lens-") as offline_name:
        bridge = TransformerBridge.boot_transformers(offline_name, hf_model=model, tokenizer=tokenizer,
                                                     dtype=next(model.parameters()).dtype)
    model.set_attn_implementation(attn_implementation)
    bridge.processor = processor
    return bridge


def check_hook_names(bridge: TransformerBridge, names: Iterable[str]) -> list[str]:
    """The names, checked against `bridge.hook_dict`; an unknown one raises naming close matches."""
    names = list(names)
    known = bridge.hook_dict
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(close)}?" if close else "list valid names with sorted(bridge.hook_dict)"
            raise UnknownName(f"unknown hook name {name!r} for this {bridge.cfg.architecture} bridge; {hint}")
    return names
