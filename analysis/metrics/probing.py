"""Linear probes of per-layer states, with Hewitt & Liang (2019) control tasks.

``LayerProbe`` is a scikit-learn style estimator: hyper-parameters in the constructor, ``fit``
stores results in attributes ending in ``_``. Inputs are torch tensors or array-likes. Folds are
grouped by input, so repeated inputs never leak from training into test; ``label_in_text`` flags
samples whose label is written in their own text (a probe could read it off the text tokens).
The probes of every layer x fold x target (x attribute, in ``probe_attributes``) are fitted together, as
batched L-BFGS solves in torch that reproduce scikit-learn's StandardScaler + LogisticRegression
(tests/test_probing.py checks their accuracy against it; benchmarks/batched_probing.py times both).
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.utils.validation import check_is_fitted

from analysis.metrics.arrays import as_numpy


def _encode(values) -> tuple[np.ndarray, list[Hashable]]:
    """Any hashable labels (list, numpy or torch) -> integer codes ``[N]`` and the distinct values
    in first-appearance order."""
    values = values.tolist() if hasattr(values, "tolist") else list(values)
    index: dict[Hashable, int] = {}
    codes = np.array([index.setdefault(v, len(index)) for v in values], dtype=np.int64)
    return codes, list(index)


def control_task(labels: Sequence[Hashable], types: Sequence[Hashable], *, seed: int = 0) -> np.ndarray:
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


# The probes of one call are fitted together: a problem is a target (an attribute's labels, or its control labels)
# on the training samples of one fold, and every layer's copy of every problem with the same number of classes is
# one batched solve.
_TOL = 1e-4  # scikit-learn's default tol: L-BFGS stops when no gradient entry of the (per-sample mean) loss exceeds it
_SOLVE_SIZE = 1 << 22  # layers are solved in chunks of at most this many weights, and logits (L-BFGS keeps ~20 copies
# of the weights); float32, so 16 MiB each


@dataclass
class _Task:
    """One target for probing: ``rows`` (indices into the states) with their label codes ``targets`` and the
    folds ``(train, test)`` (indices into ``rows``)."""

    rows: np.ndarray
    targets: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]]


def _cv_accuracy(x: np.ndarray, tasks: Sequence[_Task], C: float, max_iter: int) -> list[np.ndarray]:
    """Accuracy ``[layers, folds]`` of each task's probes on states ``x [N, layers, d]``, fitted in batches: one
    per number of classes (so no problem pays for classes it does not have), layers chunked to bound memory."""
    accuracy: list[np.ndarray | None] = [None] * len(tasks)
    by_classes: dict[int, list[int]] = {}
    for i, task in enumerate(tasks):
        by_classes.setdefault(int(task.targets.max()) + 1, []).append(i)
    for classes, indices in by_classes.items():
        for i, result in zip(indices, _batch_accuracy(x, [tasks[i] for i in indices], classes, C, max_iter)):
            accuracy[i] = result
    return accuracy


def _batch_accuracy(x: np.ndarray, tasks: Sequence[_Task], classes: int, C: float, max_iter: int) -> list[np.ndarray]:
    """``_cv_accuracy`` of tasks whose labels are codes below ``classes``."""
    n, layers, d = x.shape
    problems = [(task, train, test) for task in tasks for train, test in task.folds]
    train_mask = np.zeros((n, len(problems)), dtype=bool)
    test_mask = np.zeros((n, len(problems)), dtype=bool)
    targets = np.zeros((n, len(problems)), dtype=np.int64)
    for j, (task, train, test) in enumerate(problems):
        train_mask[task.rows[train], j] = True
        test_mask[task.rows[test], j] = True
        targets[task.rows, j] = task.targets
    chunk = max(1, _SOLVE_SIZE // (max(d, n) * len(problems) * classes))
    predicted = np.concatenate([
        _fit_predict(x[:, start:start + chunk], train_mask, targets, classes, C, max_iter)
        for start in range(0, layers, chunk)
    ])  # [layers, N, problems]
    correct = ((predicted == targets) & test_mask).sum(axis=1) / test_mask.sum(axis=0)  # [layers, problems]
    return np.split(correct, np.cumsum([len(task.folds) for task in tasks])[:-1], axis=1)


def _cv_accuracy_sklearn(x: np.ndarray, tasks: Sequence[_Task], C: float, max_iter: int) -> list[np.ndarray]:
    """``_cv_accuracy`` one scikit-learn fit at a time: the reference the batched solve is tested and timed against
    (tests/test_probing.py, benchmarks/batched_probing.py)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def fold_accuracy(states: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> float:
        if np.unique(y[train]).size < 2:  # a training fold with one class: the probe predicts it
            return float(np.mean(y[test] == y[train][0]))
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
        with warnings.catch_warnings():  # control tasks rarely converge: max_iter bounds their cost
            warnings.simplefilter("ignore", ConvergenceWarning)
            return float(probe.fit(states[train], y[train]).score(states[test], y[test]))

    return [np.array([[fold_accuracy(x[task.rows, layer], task.targets, train, test) for train, test in task.folds]
                      for layer in range(x.shape[1])]) for task in tasks]


def _fit_predict(x: np.ndarray, train: np.ndarray, targets: np.ndarray, classes: int, C: float,
                 max_iter: int) -> np.ndarray:
    """Predicted codes ``[layers, N, problems]`` of every (layer, problem) logistic regression, fitted as
    scikit-learn's ``make_pipeline(StandardScaler(), LogisticRegression(C=C))`` on the problem's training samples.

    x ``[N, layers, d]``; train ``[N, problems]`` bool; targets ``[N, problems]`` codes < ``classes``. Per problem
    the loss is the mean over its training samples of (cross-entropy + ||W||^2 / (2C)), multinomial over the classes
    present in its training samples (the intercept is not penalised); where only two are present, scikit-learn fits
    the binomial model (one weight vector w, penalty ||w||^2 / (2C)), whose optimum is the multinomial one with
    penalty ||W||^2 / C. Features are standardised with the training samples' mean and (population) standard
    deviation, constant ones left unscaled, as StandardScaler does (statistics in float64, the solve in float32
    with the loss summed in float64). The problems are independent, so one L-BFGS on the sum of their losses solves
    them all; it stops when no gradient entry of any problem exceeds scikit-learn's tol.
    """
    import torch

    f32, f64 = torch.float32, torch.float64
    X = torch.from_numpy(np.ascontiguousarray(x.transpose(1, 0, 2))).to(f64)  # [L, N, d]
    X = X - X.mean(1, keepdim=True)  # standardised features do not move with a shift; the variances lose less
    layers, n, d = X.shape
    problems = train.shape[1]
    w = torch.from_numpy(train).to(f64)  # [N, P]
    count = w.sum(0)  # [P]
    mean = torch.einsum("np,lnd->lpd", w, X) / count[:, None]  # [L, P, d]
    var = (torch.einsum("np,lnd->lpd", w, X * X) / count[:, None] - mean * mean).clamp(min=0.0)
    eps = torch.finfo(f64).eps  # StandardScaler's test for a constant feature (a bound on the rounding error)
    constant = var <= count[:, None] * eps * var + (count[:, None] * mean * eps) ** 2
    scale = torch.where(constant, 1.0, var.sqrt()).to(f32)
    X, mean = X.to(f32), mean.to(f32)

    onehot = torch.nn.functional.one_hot(torch.from_numpy(targets), classes).to(f32)  # [N, P, K]
    sample_weight = (w / count).to(f32)  # [N, P]: each problem's loss is a mean over its training samples
    target_weight = onehot * sample_weight[..., None]  # [N, P, K]
    present = target_weight.sum(0) > 0  # [P, K]: the classes each problem is trained on
    absent = torch.zeros(present.shape, dtype=f32).masked_fill_(~present, -1e30)  # finite: 0 times it is 0
    penalty = (torch.where(present.sum(1) == 2, 1.0 / C, 0.5 / C) / count).to(f32)  # [P]
    weight = torch.zeros(layers, problems, d, classes, dtype=f32, requires_grad=True)  # on standardised features
    bias = torch.zeros(layers, problems, classes, dtype=f32, requires_grad=True)

    def logits() -> torch.Tensor:  # [L, N, P, K]; absent classes far below the others
        raw = weight / scale[..., None]  # the weights on the (shifted) raw features
        z = torch.bmm(X, raw.permute(0, 2, 1, 3).reshape(layers, d, problems * classes))
        offset = bias - (mean[..., None] * raw).sum(2) + absent
        return z.view(layers, n, problems, classes).add_(offset[:, None])

    def closure() -> torch.Tensor:  # the summed loss, with its gradient written by hand (no autograd graph)
        with torch.no_grad():
            z = logits()
            z -= z.amax(-1, keepdim=True)
            loss = -(z * target_weight).sum(dtype=f64) + ((weight * weight).sum((2, 3)) * penalty).sum(dtype=f64)
            z.clamp_(min=-60.0).exp_()  # absent classes get 1e-26 of the mass; exp stays off its slow path
            total = z.sum(-1, keepdim=True)
            loss += (total.log().squeeze(-1) * sample_weight).sum(dtype=f64)
            grad_z = z.div_(total).mul_(sample_weight[..., None]).sub_(target_weight)  # d loss / d logits
            grad_offset = grad_z.sum(1)  # [L, P, K]
            grad_raw = torch.bmm(X.transpose(1, 2), grad_z.view(layers, n, problems * classes))
            grad_raw = grad_raw.view(layers, d, problems, classes).permute(0, 2, 1, 3)
            grad_raw -= mean[..., None] * grad_offset[:, :, None]
            weight.grad = (grad_raw / scale[..., None] + 2 * penalty[:, None, None] * weight).contiguous()
            bias.grad = grad_offset
        return loss

    solver = torch.optim.LBFGS([weight, bias], max_iter=max_iter, tolerance_grad=_TOL, tolerance_change=0.0,
                               history_size=10, line_search_fn="strong_wolfe")
    solver.step(closure)
    with torch.no_grad():
        return logits().argmax(-1).numpy()


class LayerProbe(BaseEstimator):
    """Cross-validated logistic-regression probe for every layer, with a control task.

    cv: number of folds, always grouped (``StratifiedGroupKFold``): samples of one input (``groups`` in
        ``fit``) never sit on both sides of a split. C: of the (standardised, L2-regularised, multinomial) logistic
        regression, as in scikit-learn's ``LogisticRegression``; max_iter: L-BFGS iterations of the one batched
        solve that fits every layer x fold x target probe together (see ``_fit_predict``).
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
        x = _states(states)
        y, self.classes_ = _encode(labels)
        group_codes = np.arange(len(y)) if groups is None else _encode(groups)[0]
        if not len(y) == len(group_codes) == len(x):
            raise ValueError(f"{len(x)} states, {len(y)} labels and {len(group_codes)} groups differ in length")
        reason = _skip_reason(y, group_codes, self.cv)
        if reason is not None:
            raise ValueError(f"cannot probe: {reason}")
        tasks = self._tasks(np.arange(len(y)), y, group_codes, types)
        self.control_labels_ = tasks[1].targets if self.control else None
        self.results_ = self._results(y, *_cv_accuracy(x, tasks, self.C, self.max_iter))
        return self

    def _tasks(self, rows: np.ndarray, y: np.ndarray, groups: np.ndarray, types) -> list[_Task]:
        """The probing task of labels ``y`` (codes) of samples ``rows`` and, with ``control``, its control task
        on the same folds."""
        splitter = StratifiedGroupKFold(self.cv, shuffle=True, random_state=self.seed)
        folds = list(splitter.split(np.zeros((len(y), 1)), y, groups))
        tasks = [_Task(rows, y, folds)]
        if self.control:
            tasks.append(_Task(rows, control_task(y, groups if types is None else types, seed=self.seed), folds))
        return tasks

    def _results(self, y: np.ndarray, accuracy: np.ndarray, control: np.ndarray | None = None) -> dict:
        """``score``'s dictionary from the accuracies ``[layers, folds]`` of the task and of its control."""
        control = np.full_like(accuracy, np.nan) if control is None else control
        return {
            "accuracy": accuracy.mean(axis=1),
            "accuracy_std": accuracy.std(axis=1),
            "control": control.mean(axis=1),
            "control_std": control.std(axis=1),
            "selectivity": accuracy.mean(axis=1) - control.mean(axis=1),
            "chance": float(np.bincount(y).max() / len(y)),
        }

    def score(self) -> dict[str, np.ndarray | float]:
        """The cross-validated results: ``accuracy``, ``accuracy_std``, ``control``, ``control_std``,
        ``selectivity`` (each ``[layers]``; control ones NaN when ``control=False``) and ``chance``
        (majority-class rate)."""
        check_is_fitted(self, "results_")
        return self.results_


def _states(states) -> np.ndarray:
    x = as_numpy(states)
    if x.ndim != 3:
        raise ValueError(f"states must be [N, layers, d], got shape {x.shape}")
    return x


def probe_attributes(states, attributes: Mapping[str, Sequence[Hashable]], *, groups: Sequence[Hashable] | None = None,
                     types: Sequence[Hashable] | None = None, **probe_kwargs) -> dict[str, dict]:
    """Probe several attributes of the same states ``[N, layers, d]``, every probe in one batched solve.

    attributes: ``{name: labels [N]}`` (colour, shape, size, position, count, digit, ...); samples
    whose label is None (e.g. a digit has no colour) are left out of that attribute's probe.
    groups, types: ``[N]``, as in ``LayerProbe.fit``. Returns ``{name: LayerProbe results}`` (what
    ``LayerProbe(**probe_kwargs).fit`` on that attribute's samples gives); an attribute that cannot be
    probed (fewer than 2 classes, a class or the distinct inputs fewer than the folds) maps to
    ``{"skipped": reason}``.
    """
    probe = LayerProbe(**probe_kwargs)
    x = _states(states)
    groups = np.arange(len(x)) if groups is None else _encode(groups)[0]
    results: dict[str, dict] = {}
    probed: dict[str, tuple[np.ndarray, list[_Task]]] = {}
    for name, labels in attributes.items():
        keep = np.array([label is not None for label in labels], dtype=bool)
        kept = [label for label in labels if label is not None]
        if not kept:
            results[name] = {"skipped": "no sample has this label"}
            continue
        y = _encode(kept)[0]
        reason = _skip_reason(y, groups[keep], probe.cv)
        if reason:
            results[name] = {"skipped": reason}
            continue
        kept_types = None if types is None else [t for t, k in zip(types, keep) if k]
        results[name] = {}  # placeholder: keeps the attributes' order
        probed[name] = y, probe._tasks(np.flatnonzero(keep), y, groups[keep], kept_types)
    tasks = [task for _, attribute_tasks in probed.values() for task in attribute_tasks]
    accuracy = iter(_cv_accuracy(x, tasks, probe.C, probe.max_iter) if tasks else [])
    for name, (y, attribute_tasks) in probed.items():
        results[name] = probe._results(y, *(next(accuracy) for _ in attribute_tasks))
    return results


def mean_pool(states_tokens, roles: Sequence[str] | Sequence[Sequence[str]], *, role: str = "A") -> np.ndarray:
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
