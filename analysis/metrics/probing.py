"""Linear probes of per-layer states, with Hewitt & Liang (2019) control tasks.

``LayerProbe`` is a scikit-learn style estimator: hyper-parameters in the constructor, ``fit``
stores results in attributes ending in ``_``. Inputs are torch tensors or array-likes.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
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


def _skip_reason(codes: np.ndarray, groups: np.ndarray | None, cv: int) -> str | None:
    """Why ``cv``-fold probing of these labels (and groups) is impossible, or None."""
    counts = np.bincount(codes)
    if len(counts) < 2:
        return "fewer than 2 classes"
    if counts.min() < cv:
        return f"smallest class has {counts.min()} samples, fewer than cv={cv} folds"
    if groups is not None and len(np.unique(groups)) < cv:
        return f"{len(np.unique(groups))} distinct types, fewer than cv={cv} folds"
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

    cv: number of folds. C, max_iter: of the (standardised, lbfgs) logistic regression.
    control: also run the control task: each distinct *type* (see ``fit``) gets a control label
        drawn uniformly from ``range(n_classes)``; selectivity = accuracy - control accuracy.
    grouped: when ``types`` are given, split folds with ``StratifiedGroupKFold`` so that no type
        is in both train and test (no leakage through repeated inputs). The control task then
        sits at chance by construction, an empirical chance level. With ``grouped=False`` folds
        are ``StratifiedKFold`` on the labels, types recur across folds and the control task
        measures how much the probe can memorise types, as in Hewitt & Liang.
    seed: seeds the fold shuffling and the control labels.
    """

    def __init__(
        self, cv: int = 5, C: float = 1.0, max_iter: int = 200, control: bool = True, grouped: bool = False,
        seed: int = 0,
    ):
        self.cv = cv
        self.C = C
        self.max_iter = max_iter
        self.control = control
        self.grouped = grouped
        self.seed = seed

    def fit(self, states, labels: Sequence[Hashable], types: Sequence[Hashable] | None = None) -> LayerProbe:
        """states ``[N, layers, d]`` (e.g. per-layer EOS states); labels ``[N]`` (any hashables);
        types ``[N]`` optional sample types (caption, scene id); without them every sample is its
        own type. Sets ``classes_`` and ``results_`` (see ``score``)."""
        x = as_numpy(states)
        if x.ndim != 3:
            raise ValueError(f"states must be [N, layers, d], got shape {x.shape}")
        y, self.classes_ = _encode(labels)
        type_codes = np.arange(len(y)) if types is None else _encode(types)[0]
        if not len(y) == len(type_codes) == len(x):
            raise ValueError(f"{len(x)} states, {len(y)} labels and {len(type_codes)} types differ in length")
        groups = type_codes if types is not None and self.grouped else None
        reason = _skip_reason(y, groups, self.cv)
        if reason is not None:
            raise ValueError(f"cannot probe: {reason}")
        if groups is None:
            splitter = StratifiedKFold(self.cv, shuffle=True, random_state=self.seed)
        else:
            splitter = StratifiedGroupKFold(self.cv, shuffle=True, random_state=self.seed)
        folds = list(splitter.split(np.zeros((len(y), 1)), y, groups))

        def cv_accuracy(targets: np.ndarray) -> np.ndarray:  # [layers, folds]
            return np.array([
                [_fold_accuracy(x[:, layer], targets, train, test, self.C, self.max_iter) for train, test in folds]
                for layer in range(x.shape[1])
            ])

        accuracy = cv_accuracy(y)
        if self.control:
            # [seed, 1], not seed: control labels must not replay labels drawn with default_rng(seed)
            rng = np.random.default_rng([self.seed, 1])
            control = cv_accuracy(rng.integers(0, len(self.classes_), size=type_codes.max() + 1)[type_codes])
        else:
            control = np.full_like(accuracy, np.nan)
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


def probe_attributes(
    states, attributes: Mapping[str, Sequence[Hashable]], types: Sequence[Hashable] | None = None, **probe_kwargs
) -> dict[str, dict]:
    """Probe several attributes of the same states ``[N, layers, d]``.

    attributes: ``{name: labels [N]}`` (colour, shape, size, position, count, digit, ...); samples
    whose label is None (e.g. a digit has no colour) are left out of that attribute's probe.
    Returns ``{name: LayerProbe results}``; an attribute that cannot be probed (fewer than 2
    classes, a class or the types smaller than the folds) maps to ``{"skipped": reason}``.
    """
    probe = LayerProbe(**probe_kwargs)
    x = as_numpy(states)
    results: dict[str, dict] = {}
    for name, labels in attributes.items():
        keep = np.array([label is not None for label in labels], dtype=bool)
        kept = [label for label in labels if label is not None]
        kept_types = None if types is None else [t for t, k in zip(types, keep) if k]
        if not kept:
            results[name] = {"skipped": "no sample has this label"}
            continue
        groups = _encode(kept_types)[0] if kept_types is not None and probe.grouped else None
        reason = _skip_reason(_encode(kept)[0], groups, probe.cv)
        results[name] = {"skipped": reason} if reason else probe.fit(x[keep], kept, kept_types).score()
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
