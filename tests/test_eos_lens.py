"""EOS lens: a residual that is one token's unembedding direction decodes to it; a model whose EOS copies a
token reads it first from layer 1 on; the last layer decodes as the model's own LM head."""

import math

import numpy as np
import pytest
import torch

from analysis.data.items import Item
from analysis.inputs import encode
from analysis.lens import capture
from analysis.lens.eos_lens import EosLens, target_ids
from analysis.metrics.layerwise import FinalNorm
from analysis.models import EMBED_TOKEN, build_tiny

V, D = 6, 8


def _orthonormal_lens(seed=0):
    """Unembedding rows: distinct standard basis vectors (exactly orthonormal, so ties are exact)."""
    rows = np.eye(D)[np.random.default_rng(seed).permutation(D)[:V]]
    return EosLens(FinalNorm(np.ones(D), 0.0), torch.tensor(rows)), rows


def test_a_state_along_one_tokens_direction_ranks_it_first_with_the_softmax_probability():
    lens, unembed = _orthonormal_lens()
    states = np.stack([unembed[2] * 5.0, unembed[4] - 0.5 * unembed[1]])  # [layers=2, d]
    ranks, logprobs = lens.target_ranks(states, [2, 4, 1])
    assert ranks.tolist() == [[1, 2, 2], [2, 1, 6]]  # layer 0: 2 first, the rest tied; layer 1: 4 first, 1 last
    a = math.sqrt(D)  # |x| / rms(x): the normed state has length sqrt(D)
    assert logprobs[0, 0] == pytest.approx(a - math.log(math.exp(a) + V - 1))
    ids, probs = lens.top_tokens(states[None], k=2)
    assert ids[0, :, 0].tolist() == [2, 4] and probs.shape == (1, 2, 2)
    assert probs[0, 0, 0] == pytest.approx(math.exp(logprobs[0, 0]))


def test_reconstruction_probe_averages_per_sample_and_skips_samples_without_b():
    lens, unembed = _orthonormal_lens()
    states = np.stack([np.stack([unembed[0], unembed[3]]), np.stack([unembed[5], unembed[5]])])  # [N=2, layers=2, d]
    probe = lens.reconstruction_probe(states, [np.array([3, 0]), np.array([], dtype=np.int64)], k=1)
    ranks, logprobs = lens.target_ranks(states[0], [3, 0])
    assert probe["n"] == 1 and probe["top_k"] == [0.5, 0.5]
    np.testing.assert_allclose(probe["logprob"], logprobs.mean(1))
    np.testing.assert_allclose(probe["first_logprob"], logprobs[:, 0])
    assert probe["median_rank"] == [1.5, 1.5] and ranks[0].tolist() == [2, 1]
    with pytest.raises(ValueError, match="no sample has B tokens"):
        lens.reconstruction_probe(states, [np.array([], dtype=np.int64)] * 2)


def _copying_model(word: str):
    """A tiny Qwen2.5-VL whose EOS copies `word`'s embedding in block 0 (uniform attention, value = the first 64
    dimensions, no MLPs, no later blocks): `word` lives in dimension 0, the EOS token in 64, the rest in 65+."""
    model, processor = build_tiny("tiny-qwen2.5-vl", seed=0)
    tok = processor.tokenizer
    word_id, eos_id = tok.convert_tokens_to_ids(word), tok.convert_tokens_to_ids(EMBED_TOKEN)
    lm = model.model.language_model
    with torch.no_grad():
        emb = lm.embed_tokens.weight  # tied with lm_head
        emb[:] = 0.0
        emb[:, 65:] = 0.1 * torch.randn(emb.shape[0], emb.shape[1] - 65, generator=torch.Generator().manual_seed(0))
        emb[word_id] = 0.0
        emb[word_id, 0] = 1.0
        emb[eos_id] = 0.0
        emb[eos_id, 64] = 1.0
        for layer in lm.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        attn = lm.layers[0].self_attn
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
            proj.weight.zero_()
            proj.bias.zero_()
        attn.v_proj.weight[:, :64] = torch.eye(64)  # kv head 0 <- dims 0-31, kv head 1 <- dims 32-63
        attn.o_proj.weight[:32, :32] = torch.eye(32)  # head 0 (kv head 0) -> dims 0-31
        attn.o_proj.weight[32:64, 64:96] = torch.eye(32)  # head 2 (kv head 1) -> dims 32-63
        lm.norm.weight.fill_(1.0)
    assert model.config.tie_word_embeddings
    return model, processor, word_id, eos_id


@pytest.mark.parametrize("mask_type", ["causal", "bidirectional"])
def test_a_model_whose_eos_copies_a_token_ranks_it_first_from_layer_1(tmp_path, mask_type):
    model, processor, word_id, eos_id = _copying_model("red")
    (cap,) = capture((model, processor), [Item("red")], mask_type, tmp_path, patterns="none").values()
    assert cap.sample(0).roles == ["A", "EOS"]
    lens = EosLens.from_model(model)
    ranks, logprobs = lens.target_ranks(cap.eos_states()[0], [word_id, eos_id])
    assert ranks[0].tolist() == [2, 1]  # the embeddings: EOS is its own token, `red` ties with everything else
    assert (ranks[1:, 0] == 1).all() and (ranks[1:, 1] == 2).all()
    copied = math.sqrt(128) / 2  # block 0 adds the mean of the normed `red` (length sqrt(128)) and nothing of EOS
    rms = math.sqrt((copied ** 2 + 1) / 128)
    a, b = copied / rms, 1 / rms
    assert logprobs[-1, 0] == pytest.approx(a - math.log(math.exp(a) + math.exp(b) + lens.unembed.shape[0] - 2),
                                            abs=1e-4)
    ids, _ = lens.top_tokens(cap.eos_states(), k=1)
    assert ids[0, :, 0].tolist() == [eos_id] + [word_id] * 4


def test_the_last_layer_decodes_as_the_models_own_lm_head(tmp_path):
    model, processor = build_tiny("tiny-qwen2-vl", seed=4)
    items = [Item("a red circle"), Item("a blue square on the left")]
    (cap,) = capture((model, processor), items, "bidirectional", tmp_path, patterns="none").values()
    batch = encode(processor, model, items)
    with torch.no_grad():
        logits = model(**batch.model_inputs("bidirectional")).logits[torch.arange(2), batch.eos_index]
    torch.testing.assert_close(EosLens.from_model(model).logits(cap.eos_states()[:, -1]), logits, atol=1e-4, rtol=1e-4)
    ids = target_ids(processor.tokenizer, ["a red circle"])
    assert processor.tokenizer.convert_ids_to_tokens(ids[0].tolist()) == ["a", "red", "circle"]
