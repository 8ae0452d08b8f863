"""Linear probes of per-layer states, with Hewitt & Liang (2019) control tasks.

``LayerProbe`` is a scikit-learn style estimator: hyper-parameters in the constructor, ``fit``
stores results in attributes ending in ``_``. Inputs are torch tensors or array-likes. Folds are
grouped by input, so repeated inputs never leak from training into test; ``label_in_text`` flags
samples whose label is written in their own text (a probe could read it off the text tokens).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from analysis.metrics.arrays import as_numpy


def _encode(values) -> tuple[np.ndarray, list[Hashable]]:
    """Any hashable labels (list, numpy or torch) -> integer codes ``[N]`` and the distinct values
    in first-appearance order."""
    values = values.tolist() if hasattr(values, "tolist") else list(values)
    index: dict[Hashable, int] = {}
    codes = np.array([index.setdefault(v, len(index)) for v in values], dtype=np.int64)
    return codes, list(index)


def control_task(labels: Sequence[Hashable], types: Sequence[Hashable], seed: int = 0) -> np.ndarray:
    """Hewitt & Liang (2019) control labels ``[N]`` (codes of ``labels``' distinct values, in
    first-appearance order): one per distinct type, drawn i.i.d. from the empirical distribution of
    ``labels``, so every sample of a type shares its type's control label."""
    y, _ = _encode(labels)
    t, _ = _encode(types)
    if len(y) != len(t):
        raise ValueError(f"{len(y)} labels but {len(t)} types")
    rng = np.random.default_rng([seed, 1])  # not default_rng(seed): must not replay labels drawn with it
    return rng.choice(y.max() + 1, size=t.max() + 1, p=np.bincount(y) / len(y))[t]


def label_in_text(labels: Sequence[Hashable | None], texts: Sequence[str]) -> np.ndarray:
    """Bool ``[N]``: sample i's label occurs in its text as whole words (``"top left"`` in ``"what is at the
    top left ?"``, not ``"red"`` in ``"tired"``); False where the label is None."""
    if len(labels) != len(texts):
        raise ValueError(f"{len(labels)} labels but {len(texts)} texts")

    def words(x) -> str:
        return " " + " ".join(re.findall(r"\w+", str(x).lower())) + " "

    return np.array([label is not None and words(label) in words(text) for label, text in zip(labels, texts)])


def _skip_reason(codes: np.ndarray, groups: np.ndarray, cv: int) -> str | None:
    """Why ``cv``-fold grouped probing of these labels is impossible, or None."""
    counts = np.bincount(codes)
    if len(counts) < 2:
        return "fewer than 2 classes"
    if counts.min() < cv:
        return f"smallest class has {counts.min()} samples, fewer than cv={cv} folds"
    if len(np.unique(groups)) < cv:
        return f"{len(np.unique(groups))} distinct inputs, fewer than cv={cv} folds"
    return None


def _fold_accuracy(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, C: float, max_iter: int) -> float:
    if np.unique(y[train]).size < 2:  # a training fold with one class: the probe predicts it
        return float(np.mean(y[test] == y[train][0]))
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    with warnings.catch_warnings():  # control tasks rarely converge: max_iter bounds their cost
        warnings.simplefilter("ignore", ConvergenceWarning)
        return float(probe.fit(x[train], y[train]).score(x[test], y[test]))


class LayerProbe(BaseEstimator):
    """Cross-validated logistic-regression probe for every layer, with a control task.

    cv: number of folds, always grouped (``StratifiedGroupKFold``): samples of one input (``groups`` in
        ``fit``) never sit on both sides of a split. C, max_iter: of the (standardised, lbfgs) logistic
        regression.
    control: also run Hewitt & Liang's control task (``control_task``: one label per *type*, drawn from
        the empirical label distribution) on the same folds; selectivity = accuracy - control accuracy.
        When types are the inputs themselves (the default), no test type was seen in training and the
        control accuracy is what the probe gets from the label distribution alone; types that recur
        across inputs (and so across folds) make it measure how well the probe memorises types.
    seed: seeds the fold shuffling and the control labels.
    """

    def __init__(self, cv: int = 5, C: float = 1.0, max_iter: int = 200, control: bool = True, seed: int = 0):
        self.cv = cv
        self.C = C
        self.max_iter = max_iter
        self.control = control
        self.seed = seed

    def fit(self, states, labels: Sequence[Hashable], groups: Sequence[Hashable] | None = None,
            types: Sequence[Hashable] | None = None) -> LayerProbe:
        """states ``[N, layers, d]`` (e.g. per-layer EOS states); labels ``[N]`` (any hashables); groups
        ``[N]`` the input's identity (a capture record's key; None: every sample a different input);
        types ``[N]`` the control task's types (None: the groups). Sets ``classes_``, ``control_labels_``
        (codes ``[N]``, None without control) and ``results_`` (see ``score``)."""
        x = as_numpy(states)
        if x.ndim != 3:
            raise ValueError(f"states must be [N, layers, d], got shape {x.shape}")
        y, self.classes_ = _encode(labels)
        group_codes = np.arange(len(y)) if groups is None else _encode(groups)[0]
        if not len(y) == len(group_codes) == len(x):
            raise ValueError(f"{len(x)} states, {len(y)} labels and {len(group_codes)} groups differ in length")
        reason = _skip_reason(y, group_codes, self.cv)
        if reason is not None:
            raise ValueError(f"cannot probe: {reason}")
        splitter = StratifiedGroupKFold(self.cv, shuffle=True, random_state=self.seed)
        folds = list(splitter.split(np.zeros((len(y), 1)), y, group_codes))

        def cv_accuracy(targets: np.ndarray) -> np.ndarray:  # [layers, folds]
            return np.array([
                [_fold_accuracy(x[:, layer], targets, train, test, self.C, self.max_iter) for train, test in folds]
                for layer in range(x.shape[1])
            ])

        accuracy = cv_accuracy(y)
        self.control_labels_ = None
        control = np.full_like(accuracy, np.nan)
        if self.control:
            self.control_labels_ = control_task(y, group_codes if types is None else types, self.seed)
            control = cv_accuracy(self.control_labels_)
        self.results_ = {
            "accuracy": accuracy.mean(axis=1),
            "accuracy_std": accuracy.std(axis=1),
            "control": control.mean(axis=1),
            "control_std": control.std(axis=1),
            "selectivity": accuracy.mean(axis=1) - control.mean(axis=1),
            "chance": float(np.bincount(y).max() / len(y)),
        }
        return self

    def score(self) -> dict[str, np.ndarray | float]:
        """The cross-validated results: ``accuracy``, ``accuracy_std``, ``control``, ``control_std``,
        ``selectivity`` (each ``[layers]``; control ones NaN when ``control=False``) and ``chance``
        (majority-class rate)."""
        check_is_fitted(self, "results_")
        return self.results_


def probe_attributes(states, attributes: Mapping[str, Sequence[Hashable]], groups: Sequence[Hashable] | None = None,
                     types: Sequence[Hashable] | None = None, **probe_kwargs) -> dict[str, dict]:
    """Probe several attributes of the same states ``[N, layers, d]``.

    attributes: ``{name: labels [N]}`` (colour, shape, size, position, count, digit, ...); samples
    whose label is None (e.g. a digit has no colour) are left out of that attribute's probe.
    groups, types: ``[N]``, as in ``LayerProbe.fit``. Returns ``{name: LayerProbe results}``; an
    attribute that cannot be probed (fewer than 2 classes, a class or the distinct inputs fewer than
    the folds) maps to ``{"skipped": reason}``.
    """
    probe = LayerProbe(**probe_kwargs)
    x = as_numpy(states)
    n = len(x)
    groups = np.arange(n) if groups is None else _encode(groups)[0]
    results: dict[str, dict] = {}
    for name, labels in attributes.items():
        keep = np.array([label is not None for label in labels], dtype=bool)
        kept = [label for label in labels if label is not None]
        if not kept:
            results[name] = {"skipped": "no sample has this label"}
            continue
        kept_types = None if types is None else [t for t, k in zip(types, keep) if k]
        reason = _skip_reason(_encode(kept)[0], groups[keep], probe.cv)
        results[name] = {"skipped": reason} if reason else probe.fit(x[keep], kept, groups[keep], kept_types).score()
    return results


def mean_pool(states_tokens, roles: Sequence[str] | Sequence[Sequence[str]], role: str = "A") -> np.ndarray:
    """Mean over the positions of one role: the mean-pooled content-token reference embedding.

    states_tokens: ``[N, L, d]`` or a list of ``[L_i, d]``; roles: one length-``L`` sequence
    shared by all samples, or one sequence per sample. Returns ``[N, d]``.
    """
    samples = [as_numpy(s) for s in states_tokens]
    per_sample = [roles] * len(samples) if isinstance(roles[0], str) else list(roles)
    if len(per_sample) != len(samples):
        raise ValueError(f"{len(samples)} samples but {len(per_sample)} role sequences")
    pooled = []
    for i, (s, r) in enumerate(zip(samples, per_sample)):
        if len(r) != len(s):
            raise ValueError(f"sample {i}: {len(s)} positions but {len(r)} roles")
        keep = np.array([x == role for x in r])
        if not keep.any():
            raise ValueError(f"sample {i} has no {role!r} positions")
        pooled.append(s[keep].mean(axis=0))
    return np.stack(pooled)
