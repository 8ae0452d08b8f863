"""Recipes: strict parsing, round-trips (YAML -> Recipe -> YAML), dotted `--set` overrides with coercion."""

from pathlib import Path

import pytest
import yaml

from analysis.train.recipe import Recipe, apply_overrides, load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "experiments" / "recipes").glob("*.yaml"))
REQUIRED = {"contrastive_causal", "contrastive_bidirectional", "cocoa_bridged", "cocoa_bridged_strict", "cocoa_mixed",
            "paper_qwen2vl_2b"}


def test_required_recipes_exist():
    assert REQUIRED <= {p.stem for p in RECIPES}


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_files_round_trip(path):
    recipe = load_recipe(path)
    text = recipe.to_yaml()
    again = Recipe.from_yaml(text)
    assert again == recipe and again.to_yaml() == text
    # every key written in the file survives unchanged
    written = yaml.safe_load(path.read_text())

    def check(node, full, where):
        for k, v in node.items():
            if isinstance(v, dict):
                check(v, full[k], f"{where}.{k}")
            elif isinstance(full[k], float):
                assert full[k] == pytest.approx(float(v)), f"{where}.{k}"
            else:
                assert full[k] == v, f"{where}.{k}"

    check(written, recipe.to_dict(), path.stem)


def test_default_round_trips_and_json_is_accepted():
    r = Recipe()
    assert Recipe.from_yaml(r.to_yaml()) == r
    import json

    assert Recipe.from_yaml(json.dumps(r.to_dict())) == r


def test_unknown_keys_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown key\(s\) recon_wieght in recipe; valid keys: name, backbone"):
        Recipe.from_dict({"recon_wieght": 0.5})
    with pytest.raises(ValueError, match=r"stages.bridged; valid keys: steps, lr, batch_size.*mask, mntp_prob"):
        Recipe.from_dict({"stages": {"bridged": {"stepz": 3}}})
    with pytest.raises(ValueError, match="unknown key 'stepz' in stages.bridged"):
        apply_overrides(Recipe(), ["stages.bridged.stepz=3"])


@pytest.mark.parametrize("data, match", [
    ({"embed_mask": "eos_bridged"}, "embed_mask: unknown 'eos_bridged'; valid: causal, bidirectional"),
    ({"stages": {"bridged": {"mask": "causl"}}}, "valid: causal, bidirectional, eos_bridged, eos_bridged_strict"),
    ({"recon_weight": 1.5}, r"recon_weight must lie in \[0, 1\]"),
    ({"stages": {"contrastive": {"steps": "many"}}}, "stages.contrastive.steps must be an integer"),
    ({"stages": {"contrastive": {"schedule": "exp"}}}, "valid: cosine, linear, constant"),
    ({"data": {"tasks": ["ShapesObject", "Nope"]}}, "valid tasks: ShapesObject"),
    ({"backbone": {"name": "/some/dir", "hidden_size": 64}}, "apply to the tiny backbones"),
    ({"device": "tpu"}, "valid: auto, cpu, cuda"),
    ({"temperature": 0}, "temperature must be > 0"),
])
def test_bad_values_are_explained(data, match):
    with pytest.raises(ValueError, match=match):
        Recipe.from_dict(data)


def test_overrides_coerce_types_and_create_stages():
    r = apply_overrides(Recipe(), ["stages.bridged.steps=100", "recon_weight=0.5", "stages.contrastive.lr=1e-3",
                                   "backbone.hidden_size=192", "symmetric=true", "data.tasks=ShapesObject,Digits",
                                   "stages.warmup.mae_ratio=0.5"])
    assert r.stages.bridged.steps == 100 and r.stages.bridged.mask == "eos_bridged"
    assert r.recon_weight == 0.5 and isinstance(r.recon_weight, float)
    assert r.stages.contrastive.lr == pytest.approx(1e-3) and isinstance(r.stages.contrastive.lr, float)
    assert r.backbone.hidden_size == 192 and r.symmetric is True
    assert r.data.tasks == ["ShapesObject", "Digits"] and r.stages.warmup.mae_ratio == 0.5
    cleared = apply_overrides(r, ["stages.warmup=null", "backbone.hidden_size=none"])
    assert cleared.stages.warmup is None and cleared.backbone.hidden_size is None
    assert [n for n, _ in r.stages.active()] == ["warmup", "bridged", "contrastive"]
    with pytest.raises(ValueError, match="not key=value"):
        apply_overrides(Recipe(), ["recon_weight"])
    with pytest.raises(ValueError, match="has no key"):
        apply_overrides(Recipe(), ["seed.x=1"])


def test_load_recipe_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  contrastive:\n    stepz: 1\n")
    with pytest.raises(ValueError, match="bad.yaml: unknown key"):
        load_recipe(bad)
