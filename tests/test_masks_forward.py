"""Both tiny backbones under every mask type: what attention may and may not see, read from the model."""

import pytest
import torch

from analysis.data.items import Item
from analysis.data.shapes import Scene, ShapeObject, render
from analysis.embed import eos_states
from analysis.inputs import encode
from analysis.masks import EOS, MASK_TYPES, PAD, A, B

SCENE = Scene((ShapeObject("red", "circle", "large", "top", "left"),))
OTHER = Scene((ShapeObject("blue", "square", "small", "bottom", "right"),))


def _batch(model, processor, targets=("a red circle", "a blue square at the bottom right")):
    items = [Item("describe the image .", render(SCENE), key="s1"),
             Item("what colour is it ?", render(OTHER), key="s2")]
    return encode(processor, model, items, list(targets))


@pytest.mark.parametrize("mask_type", MASK_TYPES)
def test_attention_respects_mask(tiny, mask_type):
    _, model, processor = tiny
    batch = _batch(model, processor)
    with torch.no_grad():
        out = model.model(**batch.model_inputs(mask_type), output_attentions=True)
    roles = batch.roles
    q, k = roles.unsqueeze(-1), roles.unsqueeze(-2)  # [B, L, 1], [B, 1, L]
    real = (q != PAD) & (k != PAD)
    for att in out.attentions:  # [B, heads, L, L]
        mass = att.sum(dim=1)
        assert mass[(k == PAD).expand_as(mass) & (q != PAD).expand_as(mass)].abs().max() == 0
        b_to_a = mass[((q == B) & (k == A)).expand_as(mass)]
        if mask_type.startswith("eos_bridged"):
            assert b_to_a.abs().max() == 0  # truncation: B never reads A directly
        else:
            assert b_to_a.sum() > 0
        eos_to_b = mass[((q == EOS) & (k == B)).expand_as(mass)]
        assert (eos_to_b.abs().max() == 0) == (mask_type in ("causal", "eos_bridged_strict"))
        if mask_type == "causal":
            upper = torch.ones_like(mass[0], dtype=torch.bool).triu(1)
            assert mass[:, upper].abs().max() == 0
        assert real.any()


@pytest.mark.parametrize("mask_type,leaks", [("eos_bridged", True), ("eos_bridged_strict", False),
                                              ("causal", False), ("bidirectional", True)])
def test_eos_state_sees_target_only_through_the_leak(tiny, mask_type, leaks):
    """Changing B changes the EOS state under eos_bridged (EOS reads B) but not under the strict variant."""
    _, model, processor = tiny
    with torch.no_grad():
        base = eos_states(model, _batch(model, processor), mask_type)
        changed = eos_states(model, _batch(model, processor, ("a red square", "a green cross at the top left")),
                             mask_type)
    assert (not torch.allclose(base, changed, atol=1e-6)) == leaks


def test_padding_does_not_change_the_embedding(tiny):
    _, model, processor = tiny
    item = Item("describe the image .", render(SCENE), key="s1")
    longer = Item("what colour is the large red circle at the top left ?", render(OTHER), key="s2")
    with torch.no_grad():
        alone = eos_states(model, encode(processor, model, [item]), "causal")
        batched = eos_states(model, encode(processor, model, [item, longer]), "causal")
    assert batched.shape[0] == 2
    assert torch.allclose(alone[0], batched[0], atol=1e-5)
