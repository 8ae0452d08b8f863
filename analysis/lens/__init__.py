"""Capture through TransformerLens: bridge Qwen2-VL / Qwen2.5-VL, record EOS states and attention flow.

`boot` wraps a model in a `TransformerBridge` (our `Qwen2VLArchitectureAdapter` fills TransformerLens'
Qwen2-VL gap); `capture` streams per-sample EOS states and pattern rows to disk under any mask types;
`Capture.open` reads them back lazily; `knockout` cuts attention edges between roles in chosen layers.
"""

from analysis.lens.bridge import boot, check_hook_names
from analysis.lens.capture import Recorder, capture, open_model, run_batch
from analysis.lens.knockout import (
    GROUPS,
    blocked,
    evaluate_knockout,
    knockout,
    knockout_embed_items,
    knockout_eos_states,
)
from analysis.lens.qwen2_vl_adapter import Qwen2VLArchitectureAdapter
from analysis.lens.sources import DATASETS, Sample
from analysis.lens.store import PATTERNS, Capture
from analysis.lens.validate import check_batch

__all__ = ["boot", "check_hook_names", "Recorder", "capture", "open_model", "run_batch", "GROUPS", "blocked",
           "evaluate_knockout", "knockout", "knockout_embed_items", "knockout_eos_states", "Qwen2VLArchitectureAdapter",
           "DATASETS", "Sample", "PATTERNS", "Capture", "check_batch"]
