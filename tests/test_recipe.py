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
    ({"stages": {"bridged": {"recon_weight": 1.5}}}, r"stages.bridged.recon_weight must lie in \[0, 1\]"),
    ({"stages": {"contrastive": {"steps": "many"}}}, "stages.contrastive.steps must be an integer"),
    ({"stages": {"contrastive": {"schedule": "exp"}}}, "valid: cosine, linear, constant"),
    ({"data": {"tasks": ["ShapesObject", "Nope"]}}, "valid tasks: ShapesObject"),
    ({"backbone": {"name": "/some/dir", "hidden_size": 64}}, "apply to the tiny backbones"),
    ({"device": "tpu"}, "valid: auto, cpu, cuda"),
    ({"stages": {"contrastive": {"temperature": 0}}}, "stages.contrastive.temperature must be > 0"),
    ({"stages": {"bridged": {"temperature": -1}}}, "stages.bridged.temperature must be > 0"),
    ({"stages": {"contrastive": {"steps": float("inf")}}}, "stages.contrastive.steps must be an integer; got inf"),
    ({"stages": {"contrastive": {"steps": float("nan")}}}, "stages.contrastive.steps must be an integer; got nan"),
    ({"stages": {"bridged": {"lr": float("inf")}}}, "stages.bridged.lr must be a finite number"),
    ({"stages": {"bridged": {"recon_weight": "one"}}}, "stages.bridged.recon_weight must be a number; got 'one'"),
    ({"recon_weight": 1.5, "stages": {"bridged": {}}}, r"stages.bridged.recon_weight must lie in \[0, 1\]"),
    ({"stages": {"bridged": {"save_every": -1}}}, "save_every must be >= 0"),
])
def test_bad_values_are_explained(data, match):
    with pytest.raises(ValueError, match=match):
        Recipe.from_dict(data)


def test_overrides_coerce_types_and_create_stages():
    r = apply_overrides(Recipe(), ["stages.bridged.steps=100", "stages.bridged.recon_weight=0.5",
                                   "stages.contrastive.lr=1e-3", "backbone.hidden_size=192",
                                   "stages.contrastive.symmetric=true", "data.tasks=ShapesObject,Digits",
                                   "stages.warmup.mae_ratio=0.5"])
    assert r.stages.bridged.steps == 100 and r.stages.bridged.mask == "eos_bridged"
    assert r.stages.bridged.recon_weight == 0.5 and isinstance(r.stages.bridged.recon_weight, float)
    assert r.stages.contrastive.lr == pytest.approx(1e-3) and isinstance(r.stages.contrastive.lr, float)
    assert r.backbone.hidden_size == 192 and r.stages.contrastive.symmetric is True
    assert r.stages.bridged.symmetric is False  # each stage holds its own
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
    (["stages.bridged.steps=10", "stages.bridged.mask=eos_bridged_strict", "stages.bridged.recon_weight=0.5"],
     ("eos_bridged_strict", 0.5)),
    (["stages.bridged.steps=10", "stages.bridged.recon_weight=0"], ("bidirectional", 0.0)),  # stage-2 mask unused
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


def test_recipes_written_before_the_stage_settings_moved_still_load():
    """A checkpoint's recipe.yaml from before: top-level recon_weight / temperature / symmetric land on the stages
    that use them (written out per key below, not by the migration), and a null stage drops them."""
    old = {"stages": {"bridged": {"steps": 5, "mask": "eos_bridged_strict"}, "contrastive": {"steps": 7},
                      "warmup": None},
           "recon_weight": 0.25, "temperature": 0.07, "symmetric": True, "embed_mask": "causal"}
    r = Recipe.from_dict(old)
    bridged = r.stages.bridged
    assert (bridged.recon_weight, bridged.temperature, bridged.symmetric) == (0.25, 0.07, True)
    assert (r.stages.contrastive.temperature, r.stages.contrastive.symmetric) == (0.07, True)
    assert r.stages.bridged.mask == "eos_bridged_strict" and r.stages.contrastive.steps == 7 and r.stages.warmup is None
    assert "recon_weight" not in r.to_dict() and "recon_weight" not in r.to_dict()["stages"]["contrastive"]
    assert Recipe.from_yaml(r.to_yaml()) == r and old["recon_weight"] == 0.25  # the input is left as it was
    assert Recipe.from_dict({"stages": {"pretrain": {"steps": 3}}, "recon_weight": 1.0}) == \
        Recipe.from_dict({"stages": {"pretrain": {"steps": 3}}})
    with pytest.raises(UsageError, match="recon_weight is given twice, 0.5 at the top and 1.0 in stages.bridged: keep "
                                         "stages.bridged.recon_weight only"):
        Recipe.from_dict({"stages": {"bridged": {"recon_weight": 1.0}}, "recon_weight": 0.5})


def test_an_override_of_a_moved_setting_names_its_new_keys():
    with pytest.raises(UsageError, match=r"override 'temperature=0.05': temperature is set per stage now; use "
                                         r"stages.bridged.temperature=0.05 or stages.contrastive.temperature=0.05"):
        apply_overrides(Recipe(), ["temperature=0.05"])
    with pytest.raises(UsageError, match=r"use stages.bridged.recon_weight=0.5$"):
        apply_overrides(Recipe(), ["recon_weight=0.5"])


def test_result_settings_leave_out_what_cannot_change_the_weights():
    """`save_every` and a disabled LoRA's settings do not make a new result; everything else, the name included,
    does (compared on the YAML text a digest is taken of)."""
    import yaml

    def text(r):
        return yaml.safe_dump(r.result_dict(), sort_keys=False)

    base = apply_overrides(Recipe(), ["stages.contrastive.steps=10"])
    same = ["stages.contrastive.save_every=5", "lora.target_modules=q_proj", "lora.r=4"]
    assert all(text(apply_overrides(base, [s])) == text(base) for s in same)
    assert not base.result_differences(apply_overrides(base, same))
    other = ["stages.contrastive.steps=11", "stages.contrastive.temperature=0.05", "lora.enabled=true", "name=x",
             "embed_mask=causal"]
    assert all(text(apply_overrides(base, [s])) != text(base) for s in other)
    on = apply_overrides(base, ["lora.enabled=true"])
    assert on.result_differences(apply_overrides(on, ["lora.r=4"])) == ["lora.r"]
