"""Capture through TransformerLens: bridge Qwen2-VL / Qwen2.5-VL, record EOS states and attention flow.

`boot` wraps a model in a `TransformerBridge` (our `Qwen2VLArchitectureAdapter` fills TransformerLens'
Qwen2-VL gap); `capture` streams per-sample EOS states and pattern rows to disk under any mask types;
`Capture.open` reads them back lazily; `knockout` cuts attention edges between roles in chosen layers.
"""

import importlib

# name -> submodule; imported on first use so that reading a capture (numpy only) does not pay for
# importing TransformerLens and transformers.
_EXPORTS = {
    "boot": "bridge", "check_hook_names": "bridge",
    "Recorder": "recorder", "capture": "recorder", "open_model": "recorder", "run_batch": "recorder",
    "GROUPS": "knockout", "blocked": "knockout", "evaluate_knockout": "knockout", "knockout": "knockout",
    "knockout_embed_items": "knockout", "knockout_eos_states": "knockout",
    "FLOWS": "knockout", "layer_windows": "knockout", "window_knockout": "knockout",
    "EosLens": "eos_lens", "capture_retrieval": "eos_lens", "final_norm": "eos_lens", "states_by_key": "eos_lens",
    "target_ids": "eos_lens", "unique_candidates": "eos_lens",
    "mask_patching": "patching", "patched_embeddings": "patching", "patching_retrieval": "patching",
    "Qwen2VLArchitectureAdapter": "qwen2_vl_adapter",
    "DATASETS": "sources", "Sample": "sources",
    "PATTERNS": "store", "Capture": "store",
    "check_batch": "validate",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'analysis.lens' has no attribute {name!r}")
    return getattr(importlib.import_module(f"analysis.lens.{_EXPORTS[name]}"), name)
