"""Score a model on MMEB-style datasets as its embedder preset embeds: P@1 per dataset, aggregated as MMEB does."""

from __future__ import annotations

from typing import Sequence

import torch

from analysis.data.items import EvalDataset
from analysis.embed import StatesFn, embed_items, eos_states
from analysis.metrics.retrieval import embedding_spread, is_degenerate, mmeb_scores, score_candidates
from analysis.presets import Preset, get_preset


def evaluate(model, processor, datasets: Sequence[EvalDataset], *, mask_type: str | None = None, batch_size: int = 64,
             progress: bool = False, states_fn: StatesFn = eos_states, preset: str | Preset = "plain",
             name: str = "the model", split: bool = False) -> dict:
    """`{"datasets": [{dataset, meta_task, split, negatives, score, score_tie_robust, ties, n, n_candidates}],
    "embedding_spread", "degenerate", **mmeb_scores(...)}`.

    Queries are embedded with the preset's query prompt, candidates with its candidate prompt, each
    distinct input once, under `mask_type` (default: the preset's attention). NaN / inf embeddings raise,
    naming `name` and the dataset. `states_fn` computes a batch's states (see `analysis.embed.embed_items`).
    `split=True` under torchrun / accelerate launch (every rank calls it): each rank embeds a slice, the
    embeddings are gathered, and every rank returns the single-process scores (let rank 0 report them).
    """
    preset = get_preset(preset)
    for d in datasets:
        n_cand = {len(ex.candidates) for ex in d.examples}
        if len(n_cand) != 1:
            raise ValueError(f"{d.key}: candidate lists differ in length {sorted(n_cand)}; pad or split the dataset")
    common = dict(mask_type=mask_type, batch_size=batch_size, progress=progress, states_fn=states_fn, preset=preset,
                  split=split)
    queries = [ex.query for d in datasets for ex in d.examples]
    candidates = [c for d in datasets for ex in d.examples for c in ex.candidates]
    query_vectors = dict(zip((it.key for it in queries),
                             embed_items(model, processor, queries, desc="queries", side="query", **common)))
    candidate_vectors = dict(zip((it.key for it in candidates),
                                 embed_items(model, processor, candidates, desc="candidates", side="candidate",
                                             **common)))
    records = []
    for d in datasets:
        query = torch.stack([query_vectors[ex.query.key] for ex in d.examples])
        cands = torch.stack([torch.stack([candidate_vectors[c.key] for c in ex.candidates]) for ex in d.examples])
        scored = score_candidates(query, cands, dataset=f"{d.key} of {name}")
        records.append(dict(dataset=d.key, meta_task=d.meta_task, split=d.split, negatives=d.negatives,
                            n=len(d.examples), n_candidates=cands.shape[1], **scored))
    spread = embedding_spread(torch.stack([*query_vectors.values(), *candidate_vectors.values()]))
    return {"datasets": records, "embedding_spread": spread, "degenerate": is_degenerate(spread),
            **mmeb_scores(records)}
