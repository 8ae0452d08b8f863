"""Training: recipes, objectives (MNTP, MAE, EOS-bridged reconstruction, InfoNCE) and the stage runner.

    from analysis.train import Recipe, load_recipe, train
    out = train(load_recipe("experiments/recipes/cocoa_bridged.yaml"), "experiments/runs/cocoa_bridged")
"""

import importlib

# name -> submodule; imported on first use so that `cocoa-lens train --help` does not pay for torch
_EXPORTS = {
    **dict.fromkeys(["MAEDecoder", "bridged_loss", "contrastive_loss", "info_nce", "mae_loss", "mntp_loss",
                     "mntp_mask", "recon_loss", "warmup_loss"], "objectives"),
    **dict.fromkeys(["STAGE_NAMES", "Recipe", "apply_overrides", "load_recipe"], "recipe"),
    **dict.fromkeys(["RecipeMismatch", "base_checkpoint", "is_complete", "score", "train"], "runner"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'analysis.train' has no attribute {name!r}")
    return getattr(importlib.import_module(f"analysis.train.{_EXPORTS[name]}"), name)
