"""Objectives: MNTP shift, MAE masking, InfoNCE, and truncation shown by gradients (not by reading the mask)."""

import math

import pytest
import torch
import torch.nn as nn

from analysis.data import training_examples
from analysis.data.items import Item
from analysis.data.shapes import Scene, ShapeObject, render
from analysis.inputs import encode
from analysis.masks import EOS, A, B, additive_mask
from analysis.train.batches import pair_batch
from analysis.train.objectives import (
    IGNORE,
    MAEDecoder,
    bridged_loss,
    forward_hidden,
    info_nce,
    input_embeddings,
    mae_loss,
    mae_token_mask,
    mask_pixels,
    mask_token_id,
    mntp_loss,
    mntp_mask,
    text_candidates,
)

SCENES = [Scene((ShapeObject("red", "circle", "large", "top", "left"),)),
          Scene((ShapeObject("blue", "square", "small", "bottom", "right"),
                 ShapeObject("green", "cross", "large", "middle", "center")))]


def _recon(model, processor, mntp_prob=1.0):
    items = [Item("describe the image .", render(s), key=f"s{i}") for i, s in enumerate(SCENES)]
    batch = encode(processor, model, items, ["a large red circle at the top left", "a small blue square"])
    ids, labels = mntp_mask(batch.input_ids, text_candidates(batch, B), mntp_prob, mask_token_id(processor.tokenizer),
                            generator=torch.Generator().manual_seed(0))
    batch.input_ids = ids
    embeds = input_embeddings(model, batch).detach().requires_grad_(True)
    return batch, labels, embeds


def _a_grad(model, batch, labels, embeds, attention_mask=None, mask_type=None) -> torch.Tensor:
    hidden = forward_hidden(model, batch, mask_type=mask_type, attention_mask=attention_mask, inputs_embeds=embeds)
    loss = mntp_loss(hidden, labels, model.lm_head)
    (grad,) = torch.autograd.grad(loss, embeds)
    return grad[batch.roles == A]  # [n_A, d]: image pads, vision start/end and prompt text


def _block_eos_from_b(batch, mask_type):
    mask = additive_mask(batch.roles, mask_type)
    q, k = batch.roles.unsqueeze(-1), batch.roles.unsqueeze(-2)
    return mask.masked_fill(((q == B) & (k == EOS)).unsqueeze(1), torch.finfo(mask.dtype).min)


def _from_b_only(batch, labels):
    """Drop the label of the first B token: under MNTP it is predicted from the EOS position itself."""
    labels = labels.clone()
    labels[torch.arange(len(labels)), batch.eos_index + 1] = IGNORE
    return labels


@pytest.mark.parametrize("mask_type", ["eos_bridged", "eos_bridged_strict"])
def test_truncation_b_loss_has_zero_gradient_to_a_once_eos_is_blocked(tiny, mask_type):
    _, model, processor = tiny
    batch, labels, embeds = _recon(model, processor)
    grad = _a_grad(model, batch, _from_b_only(batch, labels), embeds, _block_eos_from_b(batch, mask_type))
    assert torch.count_nonzero(grad) == 0


@pytest.mark.parametrize("mask_type", ["bidirectional", "causal"])
def test_without_truncation_b_loss_reaches_a_even_with_eos_blocked(tiny, mask_type):
    _, model, processor = tiny
    batch, labels, embeds = _recon(model, processor)
    grad = _a_grad(model, batch, _from_b_only(batch, labels), embeds, _block_eos_from_b(batch, mask_type))
    assert grad.abs().sum() > 0


class _DetachEOS:
    """Forward hooks that cut the gradient through the EOS residual stream after every decoder layer."""

    def __init__(self, model, eos_index):
        self.handles = [layer.register_forward_hook(self._hook) for layer in model.model.language_model.layers]
        self.eos_index = eos_index

    def _hook(self, module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        rows = torch.arange(hidden.shape[0])
        keep = torch.ones_like(hidden[..., :1])
        keep[rows, self.eos_index] = 0
        hidden = hidden * keep + (hidden * (1 - keep)).detach()
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize("mask_type", ["eos_bridged", "eos_bridged_strict"])
def test_with_eos_open_gradient_reaches_a_only_through_eos(tiny, mask_type):
    _, model, processor = tiny
    batch, labels, embeds = _recon(model, processor)
    open_grad = _a_grad(model, batch, labels, embeds, mask_type=mask_type)
    assert open_grad.abs().sum() > 0  # the bottleneck carries A -> B information ...
    with _DetachEOS(model, batch.eos_index):
        cut = _a_grad(model, batch, labels, embeds, mask_type=mask_type)
    assert torch.count_nonzero(cut) == 0  # ... and it is the only path


def test_bidirectional_gradient_survives_cutting_eos(tiny):
    _, model, processor = tiny
    batch, labels, embeds = _recon(model, processor)
    with _DetachEOS(model, batch.eos_index):
        cut = _a_grad(model, batch, labels, embeds, mask_type="bidirectional")
    assert cut.abs().sum() > 0


def test_mntp_mask_labels_only_masked_positions():
    ids = torch.arange(1, 21).view(2, 10)
    cand = torch.zeros(2, 10, dtype=torch.bool)
    cand[:, 4:] = True
    masked, labels = mntp_mask(ids, cand, 0.5, mask_id=99, generator=torch.Generator().manual_seed(1))
    chosen = labels != IGNORE
    assert chosen.any(1).all() and not chosen[:, :4].any()
    assert (masked[chosen] == 99).all() and (labels[chosen] == ids[chosen]).all()
    assert (masked[~chosen] == ids[~chosen]).all()
    _, all_labels = mntp_mask(ids, cand, 1.0, 99)
    assert ((all_labels != IGNORE) == cand).all()


def test_mntp_loss_predicts_token_i_from_position_i_minus_1():
    d, vocab = 4, 6
    head = nn.Linear(d, vocab, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(vocab, d) * 50)
    hidden = torch.zeros(1, 5, d)
    hidden[0, 1, 3] = 1.0  # position 1 "says" token 3
    labels = torch.full((1, 5), IGNORE)
    labels[0, 2] = 3  # token 3 sits at position 2
    assert mntp_loss(hidden, labels, head) < 1e-6
    labels[0, 2], labels[0, 1] = IGNORE, 3  # the same token one position earlier is predicted from position 0
    assert mntp_loss(hidden, labels, head) > 1.0


def test_mask_token_fallbacks(tiny):
    _, _, processor = tiny
    assert mask_token_id(processor.tokenizer) == processor.tokenizer.convert_tokens_to_ids("<|mask|>")

    class Qwenish:  # a real Qwen2 tokenizer has no mask token but has <|fim_pad|>
        mask_token_id, unk_token_id = None, None

        def convert_tokens_to_ids(self, token):
            return {"<|fim_pad|>": 151662}.get(token)

    assert mask_token_id(Qwenish()) == 151662


def test_mae_masks_whole_merged_tokens_before_the_vision_tower(tiny):
    _, model, processor = tiny
    batch = encode(processor, model, [Item("", render(s), key=f"m{i}") for i, s in enumerate(SCENES)])
    tokens = mae_token_mask(batch.image_grid_thw, 0.5, merge=4, generator=torch.Generator().manual_seed(0))
    assert tokens.shape == (int(batch.is_image.sum()),) and tokens.sum() == 16  # 8 of each image's 16 tokens
    decoder = MAEDecoder(model.config.text_config.hidden_size, batch.pixel_values.shape[1], learned_mask_token=True)
    with torch.no_grad():
        decoder.mask_token.fill_(7.0)
    masked = mask_pixels(batch.pixel_values, tokens, decoder.mask_token)
    rows = tokens.repeat_interleave(4)
    assert (masked[rows] == 7.0).all() and torch.equal(masked[~rows], batch.pixel_values[~rows])
    hidden = forward_hidden(model, batch, mask_type="bidirectional", pixel_values=masked)
    loss = mae_loss(decoder, hidden[batch.is_image], batch.pixel_values, tokens)
    loss.backward()
    assert loss > 0 and decoder.mask_token.grad.abs().sum() > 0  # the mask token went through the tower


def test_info_nce_ignores_duplicate_targets():
    q = torch.eye(3, 4)
    t = torch.eye(3, 4)
    t[2] = t[0]  # targets 0 and 2 are the same item
    plain = info_nce(q, t, temperature=0.1)
    dedup = info_nce(q, t, temperature=0.1, target_keys=["red", "blue", "red"])
    assert dedup < plain
    assert info_nce(q, torch.eye(3, 4), temperature=0.02) < 1e-6
    assert info_nce(q, t, temperature=0.1, target_keys=["red", "blue", "red"], symmetric=True) > 0


def test_lambda_zero_never_runs_the_recon_branch(tiny):
    _, model, processor = tiny
    from analysis.train.objectives import MaskedBatch

    recon, labels, _ = _recon(model, processor, mntp_prob=0.7)
    pairs = pair_batch(processor, model, training_examples(4, seed=3))
    calls = []
    handle = model.lm_head.register_forward_hook(lambda *a: calls.append(1))
    try:
        model.zero_grad(set_to_none=True)
        terms = bridged_loss(model, MaskedBatch(recon, labels), pairs, 0.0, "eos_bridged", "causal")
        terms["loss"].backward()
        assert not calls and "recon" not in terms and "infonce" in terms
        mixed_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        from analysis.train.objectives import contrastive_loss

        contrastive_loss(model, pairs, "causal").backward()
        pure = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        assert mixed_grads.keys() == pure.keys() and all(torch.equal(mixed_grads[n], pure[n]) for n in pure)
        mixed = bridged_loss(model, MaskedBatch(recon, labels), pairs, 0.5, "eos_bridged", "causal")
        assert calls and set(mixed) == {"recon", "infonce", "loss"}
        calls.clear()
        only = bridged_loss(model, MaskedBatch(recon, labels), None, 1.0, "eos_bridged", "causal")
        assert calls and "infonce" not in only
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("mask_type", ["causal", "bidirectional"])
def test_queries_and_targets_embedded_apart_equal_the_joint_batch(tiny, mask_type):
    """`PairBatch.parts` cuts each side to its own longest row: the EOS states are the joint batch's (padding
    is never attended), while text targets stop paying for the image queries' length."""
    from analysis.embed import eos_states

    _, model, processor = tiny
    pairs = pair_batch(processor, model, training_examples(8, seed=3))
    queries, targets = pairs.parts()
    rows = pairs.batch.input_ids.shape[0]
    assert queries.input_ids.shape[0] == pairs.n and targets.input_ids.shape[0] == rows - pairs.n
    assert min(queries.input_ids.shape[1], targets.input_ids.shape[1]) < pairs.batch.input_ids.shape[1]
    with torch.no_grad():
        joint = eos_states(model, pairs.batch, mask_type)
        apart = torch.cat([eos_states(model, queries, mask_type), eos_states(model, targets, mask_type)])
    torch.testing.assert_close(apart, joint, atol=1e-5, rtol=1e-5)


def test_text_hard_negatives_change_one_attribute_and_never_make_held_out_combinations():
    import random

    from analysis.train.batches import perturb_text

    rng = random.Random(0)
    text = "a large red circle at the top left and a small blue square at the bottom right"
    for _ in range(200):
        neg = perturb_text(text, rng)
        assert sum(a != b for a, b in zip(text.split(), neg.split())) == 1 and len(neg.split()) == len(text.split())
    assert all("green diamond" not in perturb_text("a green square", rng) for _ in range(200))  # held out (OOD)
    assert perturb_text("describe the image .", rng) is None


def test_info_nce_extra_targets_are_negatives_unless_they_equal_the_positive():
    q, t = torch.eye(2, 4), torch.eye(2, 4)
    base = info_nce(q, t, temperature=0.5, target_keys=["a", "b"])
    near = torch.cat([t, (t[:1] + 0.1 * t[1:]) / 1.005])  # a hard negative close to query 0's positive
    assert info_nce(q, near, temperature=0.5, target_keys=["a", "b", "a2"]) > base
    one, two = torch.eye(1, 4), torch.cat([torch.eye(1, 4), torch.eye(1, 4)])
    assert info_nce(one, two, temperature=0.5, target_keys=["a", "x"]) == pytest.approx(math.log(2))
    # the same item as the positive: masked
    assert info_nce(one, two, temperature=0.5, target_keys=["a", "a"]) == pytest.approx(0.0)


def test_mae_weight_zero_leaves_the_images_whole(tiny):
    from analysis.train.batches import make_batch_fn, warmup_batch
    from analysis.train.objectives import MaskedBatch, warmup_loss
    from analysis.train.recipe import Recipe

    name, model, processor = tiny
    mask_id = mask_token_id(processor.tokenizer)
    examples = training_examples(2, seed=0, tasks=("ShapesI2T",))
    masked = warmup_batch(processor, model, examples, 0.2, 0.5, mask_id, torch.Generator().manual_seed(0))
    assert masked.mae_tokens is not None and masked.mae_tokens.any()
    decoder = MAEDecoder(model.config.text_config.hidden_size, masked.batch.pixel_values.shape[1],
                         learned_mask_token=True)
    with torch.no_grad():
        decoder.mask_token.fill_(7.0)  # a masked patch would be far from any real one
        whole = warmup_loss(model, decoder, MaskedBatch(masked.batch, masked.labels), "bidirectional", 0.5)
        off = warmup_loss(model, decoder, masked, "bidirectional", 0.0)
        on = warmup_loss(model, decoder, masked, "bidirectional", 0.5)
    assert set(off) == {"mntp", "loss"} and torch.equal(off["loss"], whole["loss"])  # the same, unmasked input
    assert "mae" in on and not torch.equal(on["mntp"], whole["mntp"])  # weight > 0: the patches are masked
    recipe = Recipe.from_dict({"name": "t", "backbone": {"name": name},
                               "stages": {"warmup": {"steps": 1, "batch_size": 2, "mae_weight": 0.0}}})
    assert make_batch_fn(recipe, "warmup", processor, model, mask_id)(0)["warmup"].mae_tokens is None
