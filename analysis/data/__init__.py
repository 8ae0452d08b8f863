"""Data: the synthetic shapes world, scikit-learn digits, mini-MMEB and the MMEB-eval loader."""

from analysis.data.items import EvalDataset, Example, Item
from analysis.data.mini_mmeb import META_TASKS, TASK_NAMES, build_mini_mmeb, training_examples
from analysis.data.mmeb_eval import load_mmeb_eval

__all__ = ["EvalDataset", "Example", "Item", "META_TASKS", "TASK_NAMES", "build_mini_mmeb", "training_examples",
           "load_mmeb_eval"]
