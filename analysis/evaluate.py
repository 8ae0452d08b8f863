"""Score a model on MMEB-style datasets: P@1 per dataset, aggregated as MMEB does."""

from __future__ import annotations

from typing import Sequence

import torch

from analysis.data.items import EvalDataset
from analysis.embed import StatesFn, embed_items, eos_states
from analysis.metrics.retrieval import mmeb_scores, precision_at_1


def evaluate(model, processor, datasets: Sequence[EvalDataset], mask_type: str = "causal", batch_size: int = 64,
             progress: bool = False, states_fn: StatesFn = eos_states) -> dict:
    """`{"datasets": [{dataset, meta_task, split, negatives, score, n}], **mmeb_scores(...)}`.

    `states_fn` computes a batch's EOS states (see `analysis.embed.embed_items`).
    """
    items = [it for d in datasets for ex in d.examples for it in (ex.query, *ex.candidates)]
    vectors = embed_items(model, processor, items, mask_type, batch_size, progress=progress, desc="mini-MMEB",
                          states_fn=states_fn)
    by_key = {it.key: v for it, v in zip(items, vectors)}
    records = []
    for d in datasets:
        n_cand = {len(ex.candidates) for ex in d.examples}
        if len(n_cand) != 1:
            raise ValueError(f"{d.key}: candidate lists differ in length {sorted(n_cand)}; pad or split the dataset")
        query = torch.stack([by_key[ex.query.key] for ex in d.examples])
        cands = torch.stack([torch.stack([by_key[c.key] for c in ex.candidates]) for ex in d.examples])
        records.append(dict(dataset=d.key, meta_task=d.meta_task, split=d.split, negatives=d.negatives,
                            score=precision_at_1(query, cands), n=len(d.examples), n_candidates=n_cand.pop()))
    return {"datasets": records, **mmeb_scores(records)}
