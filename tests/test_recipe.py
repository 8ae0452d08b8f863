"""Recipes: strict parsing, round-trips (YAML -> Recipe -> YAML), dotted `--set` overrides with coercion."""

from pathlib import Path

import pytest
import yaml

from analysis.errors import UsageError
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
    ({"stages": {"contrastive": {"steps": float("inf")}}}, "stages.contrastive.steps must be an integer; got inf"),
    ({"stages": {"contrastive": {"steps": float("nan")}}}, "stages.contrastive.steps must be an integer; got nan"),
    ({"stages": {"bridged": {"lr": float("inf")}}}, "stages.bridged.lr must be a finite number"),
    ({"recon_weight": "one"}, "recon_weight must be a number; got 'one'"),
    ({"stages": {"bridged": {"save_every": -1}}}, "save_every must be >= 0"),
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


def test_yaml_syntax_errors_and_unparsable_overrides_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  contrastive: {steps: 3\n")
    with pytest.raises(UsageError, match=r"bad.yaml is not valid YAML: .* at line \d+, column \d+"):
        load_recipe(bad)
    bad.write_text("stages:\n  contrastive:\n    steps: .inf\n")
    with pytest.raises(UsageError, match="bad.yaml: stages.contrastive.steps must be an integer; got inf"):
        load_recipe(bad)
    with pytest.raises(UsageError, match=r"unknown key 'k' in recipe \(override 'k=\[1'\)"):
        apply_overrides(Recipe(), ["k=[1"])
    with pytest.raises(UsageError, match=r"override 'data.tasks=\[Digits': the value is not valid YAML"):
        apply_overrides(Recipe(), ["data.tasks=[Digits"])
    with pytest.raises(UsageError, match=r"no recipe at .*nowhere.yaml"):
        load_recipe(tmp_path / "nowhere.yaml")


@pytest.mark.parametrize("overrides, point", [
    (["stages.contrastive.steps=10"], ("bidirectional", 0.0)),
    (["stages.contrastive.steps=10", "embed_mask=causal"], ("causal", 0.0)),
    (["stages.bridged.steps=10"], ("eos_bridged", 1.0)),
    (["stages.bridged.steps=10", "stages.bridged.mask=eos_bridged_strict", "recon_weight=0.5"],
     ("eos_bridged_strict", 0.5)),
    (["stages.bridged.steps=10", "recon_weight=0"], ("bidirectional", 0.0)),  # the stage-2 mask is never used
    (["stages.bridged.steps=0", "stages.contrastive.steps=10"], ("bidirectional", 0.0)),
])
def test_grid_point_is_read_from_the_recipe(overrides, point):
    assert apply_overrides(Recipe(), overrides).grid_point() == point


def test_shipped_recipes_sit_where_their_names_say():
    points = {p.stem: load_recipe(p).grid_point() for p in RECIPES}
    assert points["cocoa_bridged"] == ("eos_bridged", 1.0) and points["cocoa_mixed"] == ("eos_bridged", 0.5)
    assert points["cocoa_bridged_strict"] == ("eos_bridged_strict", 1.0)
    assert points["contrastive_causal"] == ("causal", 0.0)
    assert points["contrastive_bidirectional"] == ("bidirectional", 0.0)


def test_a_recipe_needs_a_stage_to_train():
    with pytest.raises(UsageError, match="has no stage with steps > 0"):
        Recipe().require_stages()
    apply_overrides(Recipe(), ["stages.contrastive.steps=1"]).require_stages()
