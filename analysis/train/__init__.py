"""Training: recipes, objectives (MNTP, MAE, EOS-bridged reconstruction, InfoNCE) and the stage runner.

    from analysis.train import Recipe, load_recipe, train
    out = train(load_recipe("experiments/recipes/cocoa_bridged.yaml"), "experiments/runs/cocoa_bridged")
"""

from analysis.train.objectives import (
    MAEDecoder,
    bridged_loss,
    contrastive_loss,
    info_nce,
    mae_loss,
    mntp_loss,
    mntp_mask,
    recon_loss,
    warmup_loss,
)
from analysis.train.recipe import STAGE_NAMES, Recipe, apply_overrides, load_recipe
from analysis.train.runner import RecipeMismatch, base_checkpoint, is_complete, score, train

__all__ = ["MAEDecoder", "Recipe", "RecipeMismatch", "STAGE_NAMES", "apply_overrides", "base_checkpoint",
           "bridged_loss", "contrastive_loss", "info_nce", "is_complete", "load_recipe", "mae_loss", "mntp_loss",
           "mntp_mask", "recon_loss", "score", "train", "warmup_loss"]
