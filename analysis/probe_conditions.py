"""Probing the EOS state of one capture condition, as the eos_probing notebook shows it: the EOS state and the
mean-pooled content (A) tokens, on all samples and on those whose text does not hold the label, folds grouped
by image; and, under the bridged masks, the samples that have a B segment."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from analysis.lens.store import Capture, SampleRecord
from analysis.metrics.probing import label_in_text, probe_attributes


def group_of(record: SampleRecord) -> str:
    """The image a mini-MMEB input shows (its key is `<image id>|<text>`), else the whole input: probe folds
    are grouped by it."""
    return record.key.split("|", 1)[0]


@dataclass
class ProbeSet:
    """One set of probes: which metrics key it lands under (`metric`, the mask key's `suffix`), which states
    and samples, the figure's stem, the results per attribute and the attributes skipped (with the reason)."""

    metric: str
    suffix: str
    states: str
    samples: str
    stem: str
    results: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)
    n: int = 0

    def figure(self, ran: str) -> str:
        """The figure's file stem for the condition that ran as `ran`."""
        return self.stem.format(ran=ran)

    def as_lists(self) -> dict:
        return {a: {k: np.asarray(v).tolist() for k, v in r.items()} for a, r in self.results.items()}

    def rows(self, condition: str) -> list[tuple]:
        """Rows of `analysis.tables.probe_summary_table`."""
        return [(condition, self.states, self.samples, a, r) for a, r in self.results.items()]


def _layers(states: np.ndarray, layers) -> np.ndarray:
    return states if layers == "all" else states[:, list(layers)]


def _filled(probe_set: ProbeSet, results: dict[str, dict]) -> ProbeSet:
    """`probe_set` holding `probe_attributes`' results, the skipped attributes (with the reason) apart."""
    for name, r in results.items():
        (probe_set.skipped if "skipped" in r else probe_set.results)[name] = r.get("skipped", r)
    return probe_set


def probe_condition(capture: Capture, attributes: Sequence[str], n: int, *, layers="all", cv: int = 3,
                    seed: int = 0) -> tuple[list[ProbeSet], dict[str, float]]:
    """The first `n` samples' probes (EOS and mean-pooled A; all samples and label not in text) and the share
    of samples whose text holds each label. `layers`: "all" or residual layer indices (0 = embeddings)."""
    records = capture.records[:n]
    groups = [group_of(r) for r in records]
    texts = [f"{r.instruction or ''} {r.text or ''}" for r in records]
    labels = {a: capture.labels(a)[:n] for a in attributes}
    in_text = {a: label_in_text(values, texts) for a, values in labels.items()}
    # an attribute no text names has the same samples either way: probed once, its result shown under both
    hidden = {a: [None if f else v for v, f in zip(values, in_text[a])] for a, values in labels.items()
              if in_text[a].any()}
    sets = []
    for states_name, stem, suffix, states in (("EOS", "probing_curves", "", capture.eos_states()[:n]),
                                              ("mean-pooled A", "probing_content", "/content_mean",
                                               capture.content_mean()[:n])):
        states = _layers(states, layers)
        every = probe_attributes(states, labels, groups=groups, cv=cv, seed=seed)
        unnamed = {**every, **probe_attributes(states, hidden, groups=groups, cv=cv, seed=seed)}  # same order
        sets += [_filled(ProbeSet("probes", suffix, states_name, "all", f"{stem}_{{ran}}", n=n), every),
                 _filled(ProbeSet("probes_label_not_in_text", suffix, states_name, "label not in text",
                                  f"{stem}_{{ran}}_label_not_in_text", n=n), unnamed)]
    return sets, {a: float(flags.mean()) for a, flags in in_text.items()}


def probe_with_b(capture: Capture, attributes: Sequence[str], n: int, *, layers="all", cv: int = 3,
                 seed: int = 0) -> ProbeSet:
    """EOS probes on the samples (of the first `n`) that have a B segment (a capture made with targets)."""
    captured = capture.records[:n]
    with_b = [i for i, r in enumerate(captured) if r.has_b]
    records = [captured[i] for i in with_b]
    labels = {a: [r.labels.get(a) for r in records] for a in attributes}
    probe_set = ProbeSet("probes_with_b", "", "EOS", "all with B", f"probing_curves_with_b_{capture.mask_type}",
                         n=len(with_b))
    return _filled(probe_set, probe_attributes(_layers(capture.eos_states()[with_b], layers), labels,
                                                groups=[group_of(r) for r in records], cv=cv, seed=seed))
