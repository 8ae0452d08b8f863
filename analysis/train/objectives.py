"""Training objectives: MNTP, MAE, EOS-bridged reconstruction and InfoNCE, on plain tensors + a model.

- **MNTP** (masked next-token prediction, LLM2Vec / CoCoA): chosen text tokens are replaced by the mask
  token; the label of a masked token i sits at position i and is predicted from the hidden state at
  position i-1 (so the first B token of `[A][EOS][B]` is predicted from the EOS state).
- **MAE**: merged image tokens (Qwen's 2x2 patch groups, the granularity of the LLM's `<|image_pad|>`
  tokens) are masked *before the vision tower*: their 4 rows of `pixel_values` are replaced by a
  pixel-space mask vector (zeros = the normalised mean colour; optionally learned). A small MLP decoder
  maps the LLM's last-layer state at each masked image token back to its 4 patches; loss = MSE against
  the processor-normalised pixels, masked tokens only.
- **Reconstruction** (stage 2): MNTP on the masked B tokens of `[A][EOS][B]` under the stage's mask.
- **InfoNCE**: query -> target cross-entropy over in-batch targets on L2-normalised last-layer EOS states
  (`analysis.embed.eos_states`), temperature 0.02. Other in-batch targets identical to the positive (same
  `Item.key`, e.g. two "red" answers) are removed from the negatives. `symmetric=True` adds target -> query.
  Optional extra targets (text hard negatives, `analysis.train.batches.perturb_text`) only add negatives.

Several processes (torchrun / accelerate launch): each rank holds a slice of the global batch. Means over
tokens divide by the count over all ranks, and InfoNCE gathers every rank's embeddings (this rank's keep
their gradient), so every term's value is the single-process one and the sum over ranks of the
parameter gradients is the single-process gradient (`analysis.distributed.all_reduce_grads`).
`chunk_size` runs InfoNCE with gradient caching (`analysis.train.gradcache`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int  # noqa: F401  (shape annotations as in TransformerLens)
from torch import Tensor

from analysis import distributed
from analysis.embed import eos_states
from analysis.inputs import Batch
from analysis.masks import PAD, A, additive_mask

IGNORE = -100
MASK_FALLBACKS = ("<|fim_pad|>", "_")


def mask_token_id(tokenizer) -> int:
    """The MNTP mask token: the tokenizer's own mask token, else `<|fim_pad|>` (real Qwen2 vocab), else "_"."""
    if getattr(tokenizer, "mask_token_id", None) is not None:
        return int(tokenizer.mask_token_id)
    for token in MASK_FALLBACKS:
        ids = tokenizer.convert_tokens_to_ids(token)
        if ids is not None and ids != tokenizer.unk_token_id:
            return int(ids)
    raise ValueError(f"tokenizer has no mask token and none of the fallbacks {MASK_FALLBACKS}")


def base_model(model):
    """The Hugging Face `...ForConditionalGeneration` under a peft wrapper (LoRA layers stay injected)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


# -- forward pieces --------------------------------------------------------------------------------
def input_embeddings(model, batch: Batch, *, pixel_values: Tensor | None = None) -> Float[Tensor, "batch pos d_model"]:
    """Token embeddings with the vision tower's merged image features scattered into the image-pad slots."""
    core = base_model(model).model
    embeds = core.get_input_embeddings()(batch.input_ids)
    pixel_values = batch.pixel_values if pixel_values is None else pixel_values
    if pixel_values is not None:
        feats = torch.cat(core.get_image_features(pixel_values, batch.image_grid_thw).pooler_output)
        embeds = embeds.masked_scatter(batch.is_image.unsqueeze(-1).expand_as(embeds), feats.to(embeds.dtype))
    return embeds


def forward_hidden(model, batch: Batch, *, mask_type: str | None = None, attention_mask: Tensor | None = None,
                   pixel_values: Tensor | None = None, inputs_embeds: Tensor | None = None
                   ) -> Float[Tensor, "batch pos d_model"]:
    """Last-layer (final-norm) hidden states under `mask_type` or an explicit additive `attention_mask`.

    Runs the model's own multimodal forward (so Qwen3-VL's DeepStack features are injected as when it
    embeds), with `pixel_values` in place of the batch's (e.g. MAE-masked); given `inputs_embeds` (e.g. to
    take gradients with respect to them), the text decoder runs on those directly.
    """
    core = base_model(model).model
    if attention_mask is None:
        dtype = inputs_embeds.dtype if inputs_embeds is not None else next(core.parameters()).dtype
        attention_mask = additive_mask(batch.roles, mask_type, dtype=dtype)
    if inputs_embeds is not None:
        return core.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                   position_ids=batch.position_ids).last_hidden_state
    pixel_values = batch.pixel_values if pixel_values is None else pixel_values
    return core(input_ids=batch.input_ids, attention_mask=attention_mask, position_ids=batch.position_ids,
                mm_token_type_ids=batch.mm_token_type_ids, pixel_values=pixel_values,
                image_grid_thw=batch.image_grid_thw).last_hidden_state


# -- MNTP ------------------------------------------------------------------------------------------
def mntp_mask(input_ids: Int[Tensor, "batch pos"], candidates: Bool[Tensor, "batch pos"], prob: float, mask_id: int,
              *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Mask each candidate with probability `prob` (at least one per row that has candidates).

    Returns `(masked_ids, labels)`: labels hold the original id at masked positions and IGNORE elsewhere.
    Position 0 is never a candidate (nothing precedes it to predict it from).
    """
    candidates = candidates.clone()
    candidates[:, 0] = False
    r = torch.rand(input_ids.shape, generator=generator)
    chosen = candidates & (r < prob)
    empty = candidates.any(1) & ~chosen.any(1)
    if empty.any():
        first = r.masked_fill(~candidates, 2.0).argmin(1)
        chosen[empty, first[empty]] = True
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE))
    return torch.where(chosen, torch.full_like(input_ids, mask_id), input_ids), labels


def mntp_loss(hidden: Float[Tensor, "batch pos d_model"], labels: Int[Tensor, "batch pos"], lm_head: nn.Module,
              *, reduction: str = "mean") -> Tensor:
    """Cross-entropy of the label at position i predicted from `hidden[:, i-1]` (logits only where needed)."""
    target = labels[:, 1:]
    chosen = target != IGNORE
    logits = lm_head(hidden[:, :-1][chosen]).float()
    if reduction == "mean" and distributed.active():
        return global_mean(F.cross_entropy(logits, target[chosen], reduction="sum"), chosen.sum())
    return F.cross_entropy(logits, target[chosen], reduction=reduction)


def global_mean(total: Tensor, count: Tensor | int) -> Tensor:
    """A mean over the elements of all ranks, from this rank's `total` (sum) and `count`.

    Its value is the global mean on every rank; its gradient is this rank's share (total / global count),
    so the ranks' gradients sum to the global mean's. In one process: `total / count`.
    """
    global_count = distributed.all_reduce_sum(torch.as_tensor(count, device=total.device, dtype=total.dtype))
    part = total / global_count
    return part + (distributed.all_reduce_sum(part) - part).detach()


# -- MAE -------------------------------------------------------------------------------------------
class MAEDecoder(nn.Module):
    """Pixel decoder owned by the training module: LLM image-token state -> its `merge` patches.

    Also holds the pixel-space `mask_token` that replaces masked patch rows before the vision tower: zeros
    by default (in processor-normalised space, the dataset mean colour), or a learned vector with
    `learned_mask_token=True` (SimMIM style; it costs an input-gradient through the patch embedding,
    ~10% of a tiny warm-up step). Saved with the warm-up stage checkpoint (`train_heads.safetensors`);
    not part of the HF model.
    """

    def __init__(self, d_model: int, patch_dim: int, merge: int = 4, hidden: int | None = None,
                 learned_mask_token: bool = False):
        super().__init__()
        hidden = hidden or d_model
        self.merge, self.patch_dim = merge, patch_dim
        if learned_mask_token:
            self.mask_token = nn.Parameter(torch.zeros(patch_dim))
        else:
            self.register_buffer("mask_token", torch.zeros(patch_dim))
        self.net = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, merge * patch_dim))

    def forward(self, states: Float[Tensor, "n d_model"]) -> Float[Tensor, "n merge patch_dim"]:
        return self.net(states).view(-1, self.merge, self.patch_dim)


def mae_token_mask(image_grid_thw: Int[Tensor, "images 3"], ratio: float, *, merge: int = 4,
                   generator: torch.Generator | None = None) -> Bool[Tensor, " tokens"]:
    """Choose round(ratio * n) of each image's n merged tokens (at least 1, at most n-1)."""
    out = []
    for n in (image_grid_thw.prod(-1) // merge).tolist():
        k = min(max(1, round(ratio * n)), max(n - 1, 1))
        picked = torch.zeros(n, dtype=torch.bool)
        picked[torch.randperm(n, generator=generator)[:k]] = True
        out.append(picked)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


def mask_pixels(pixel_values: Float[Tensor, "patches patch_dim"], token_mask: Bool[Tensor, " tokens"],
                mask_token: Float[Tensor, " patch_dim"], *, merge: int = 4) -> Tensor:
    """Replace the `merge` patch rows of every masked merged token by `mask_token` (before the vision tower)."""
    rows = token_mask.to(pixel_values.device).repeat_interleave(merge).unsqueeze(-1)
    return torch.where(rows, mask_token.to(pixel_values.dtype).expand_as(pixel_values), pixel_values)


def mae_loss(decoder: MAEDecoder, image_states: Float[Tensor, "tokens d_model"],
             pixel_values: Float[Tensor, "patches patch_dim"], token_mask: Bool[Tensor, " tokens"]) -> Tensor:
    """MSE between decoded and original (normalised) pixels of the masked merged tokens."""
    token_mask = token_mask.to(image_states.device)
    pred = decoder(image_states[token_mask]).float()
    target = pixel_values.view(-1, decoder.merge, decoder.patch_dim)[token_mask].float()
    if distributed.active():
        return global_mean(F.mse_loss(pred, target, reduction="sum"), pred.numel())
    return F.mse_loss(pred, target)


# -- InfoNCE ---------------------------------------------------------------------------------------
def info_nce(query: Float[Tensor, "n d"], target: Float[Tensor, "m d"], *, temperature: float = 0.02,
             target_keys: list[str] | None = None, symmetric: bool = False) -> Tensor:
    """In-batch InfoNCE on cosine similarity: query i's positive is target i; targets beyond the n-th are
    extra (hard) negatives. A target equal to query i's positive (same key) is not a negative for i."""
    n = len(query)
    q, t = F.normalize(query.float(), dim=-1), F.normalize(target.float(), dim=-1)
    logits = q @ t.T / temperature
    labels = torch.arange(n, device=logits.device)
    if target_keys is not None:
        codes = {k: i for i, k in enumerate(dict.fromkeys(target_keys))}
        ids = torch.tensor([codes[k] for k in target_keys], device=logits.device)
        same = ids[:n, None] == ids[None, :]
        same[labels, labels] = False
        logits = logits.masked_fill(same, float("-inf"))
    loss = F.cross_entropy(logits, labels)
    return (loss + F.cross_entropy(logits[:, :n].T, labels)) / 2 if symmetric else loss


# -- prepared batches and batch-level losses --------------------------------------------------------
def _to(obj, device):
    return replace(obj, **{f.name: getattr(obj, f.name).to(device) for f in fields(obj)
                           if hasattr(getattr(obj, f.name), "to")})


@dataclass
class MaskedBatch:
    """A `Batch` whose input_ids are already masked, its MNTP `labels`, and (warm-up) the MAE token mask."""

    batch: Batch
    labels: Tensor
    mae_tokens: Tensor | None = None

    def to(self, device) -> "MaskedBatch":
        return _to(self, device)

    def n_tokens(self) -> int:
        return int((self.batch.roles != PAD).sum())


@dataclass
class PairBatch:
    """Queries (rows `:n`) and their targets (rows `n:`) encoded together as `[x][EOS]`."""

    batch: Batch
    n: int
    target_keys: list[str]

    def to(self, device) -> "PairBatch":
        return replace(self, batch=self.batch.to(device))

    def n_tokens(self) -> int:
        return int((self.batch.roles != PAD).sum())

    def parts(self) -> list[Batch]:
        """The queries and the targets as two batches, each cut to its own longest row: targets (often a short
        text) then do not pay for the queries' padding."""
        rows = self.batch.input_ids.shape[0]
        return [self.batch.rows(part).trimmed() for part in (range(0, self.n), range(self.n, rows)) if part]


def text_candidates(batch: Batch, role: int) -> Tensor:
    """Positions of `role` that hold text: not image pads, nor the vision start / end tokens flanking them."""
    text = (batch.roles == role) & ~batch.is_image
    if role == A:  # vision start / end flank the image pads
        nxt = torch.zeros_like(batch.is_image)
        nxt[:, :-1] = batch.is_image[:, 1:]
        prv = torch.zeros_like(batch.is_image)
        prv[:, 1:] = batch.is_image[:, :-1]
        text &= ~nxt & ~prv
    return text


def warmup_loss(model, decoder: MAEDecoder, mb: MaskedBatch, mask_type: str, mae_weight: float) -> dict[str, Tensor]:
    """Stage 1: MNTP on masked text + `mae_weight` x MAE on masked image tokens, under `mask_type`.
    At `mae_weight` 0 the images go in whole: no MAE, and no patch masked."""
    batch = mb.batch
    pixels = batch.pixel_values
    mae = mae_weight > 0 and pixels is not None and mb.mae_tokens is not None
    masked_pixels = mask_pixels(pixels, mb.mae_tokens, decoder.mask_token, merge=decoder.merge) if mae else None
    hidden = forward_hidden(model, batch, mask_type=mask_type, pixel_values=masked_pixels)
    out = {"mntp": mntp_loss(hidden, mb.labels, base_model(model).lm_head)}
    out["loss"] = out["mntp"]
    if mae:
        out["mae"] = mae_loss(decoder, hidden[batch.is_image], pixels, mb.mae_tokens)
        out["loss"] = out["mntp"] + mae_weight * out["mae"]
    return out


def recon_loss(model, mb: MaskedBatch, mask_type: str, **forward_kwargs) -> Tensor:
    """Stage 2 reconstruction: MNTP on the masked B tokens of `[A][EOS][B]` under `mask_type`."""
    hidden = forward_hidden(model, mb.batch, mask_type=mask_type, **forward_kwargs)
    return mntp_loss(hidden, mb.labels, base_model(model).lm_head)


def contrastive_loss(model, pb: PairBatch, embed_mask: str, *, temperature: float = 0.02,
                     symmetric: bool = False, chunk_size: int | None = None, weight: float = 1.0) -> Tensor:
    """InfoNCE between the EOS states of `[query][EOS]` and `[target][EOS]`, both under `embed_mask`.

    Across ranks the queries and targets of all ranks are gathered (in global order) before the loss.
    With `chunk_size` the loss is computed with gradient caching and `weight` x its gradient is already
    accumulated into the parameters' `.grad` when this returns (the returned value is detached).
    """
    if chunk_size:
        from analysis.train.gradcache import cached_contrastive_loss

        return cached_contrastive_loss(model, pb, embed_mask, temperature=temperature, symmetric=symmetric,
                                       chunk_size=chunk_size, weight=weight)
    states = torch.cat([eos_states(base_model(model), part, embed_mask) for part in pb.parts()])
    query, target = distributed.gather_with_grad(states[:pb.n]), distributed.gather_with_grad(states[pb.n:])
    return info_nce(query, target, temperature=temperature, target_keys=pb.target_keys, symmetric=symmetric)


def bridged_loss(model, recon: MaskedBatch | None, pairs: PairBatch | None, recon_weight: float, mask_type: str,
                 embed_mask: str, *, temperature: float = 0.02, symmetric: bool = False,
                 chunk_size: int | None = None) -> dict[str, Tensor]:
    """Stage 2: `λ·L_recon + (1-λ)·L_infonce`; a branch whose weight is 0 is not computed at all.

    With `chunk_size` the InfoNCE branch uses gradient caching: its `(1-λ)`-weighted gradient is accumulated
    at once and its term is detached (backpropagate `loss` for the reconstruction part)."""
    out: dict[str, Tensor] = {}
    total = 0.0
    if recon_weight > 0:
        out["recon"] = recon_loss(model, recon, mask_type)
        total = total + recon_weight * out["recon"]
    if recon_weight < 1:
        out["infonce"] = contrastive_loss(model, pairs, embed_mask, temperature=temperature, symmetric=symmetric,
                                          chunk_size=chunk_size, weight=1 - recon_weight)
        total = total + (1 - recon_weight) * out["infonce"]
    out["loss"] = total
    return out


__all__ = ["IGNORE", "MAEDecoder", "MaskedBatch", "PairBatch", "bridged_loss", "contrastive_loss", "forward_hidden",
           "global_mean", "info_nce", "input_embeddings", "mae_loss", "mae_token_mask", "mask_pixels", "mask_token_id",
           "mntp_loss", "mntp_mask", "recon_loss", "text_candidates", "warmup_loss"]
