"""The stage runner end to end on the tiny backbone: loss falls, resume, idempotence, refusing a different recipe."""

import json

import pytest
import torch
from safetensors.torch import load_file

import analysis.train.runner as runner
from analysis.cli import main
from analysis.train import Recipe, RecipeMismatch, apply_overrides, train
from analysis.train.batches import make_batch_fn, prefetch, stage_examples
from analysis.train.objectives import mask_token_id


def _recipe(name="t", **extra) -> Recipe:
    sets = ["stages.warmup.steps=2", "stages.warmup.batch_size=4", "stages.bridged.steps=2",
            "stages.bridged.batch_size=4", "stages.contrastive.steps=2", "stages.contrastive.batch_size=4",
            "eval.n_per_dataset=2", "backbone.hidden_size=32", "backbone.vision_width=32", "device=cpu",
            *[f"{k}={v}" for k, v in extra.items()]]
    return apply_overrides(Recipe(name=name), sets)


@pytest.mark.parametrize("stage, recon_weight, key", [
    ("pretrain", 1.0, "loss"), ("warmup", 1.0, "loss"), ("bridged", 1.0, "recon"), ("bridged", 0.5, "infonce"),
    ("contrastive", 1.0, "loss")])
def test_loss_falls_on_a_small_budget(stage, recon_weight, key):
    steps = 30
    recipe = apply_overrides(Recipe(name="fall"), [
        f"stages.{stage}.steps={steps}", f"stages.{stage}.batch_size=8", f"stages.{stage}.lr=2e-3",
        f"stages.{stage}.warmup_ratio=0.1", "data.batching=mixed", f"recon_weight={recon_weight}", "device=cpu"])
    model, processor = runner.build_model(recipe, torch.device("cpu"))
    decoder = runner.make_decoder(model, processor) if stage == "warmup" else None
    make = make_batch_fn(recipe, stage, processor, model, mask_token_id(processor.tokenizer))
    curve = runner.run_stage(recipe, stage, model, decoder, prefetch(make, range(steps)), torch.device("cpu"), False)
    first = sum(c[key] for c in curve[:5]) / 5
    last = sum(c[key] for c in curve[-5:]) / 5
    assert last < 0.9 * first, (first, last)


def test_batches_are_a_pure_function_of_seed_stage_and_step():
    r = Recipe()
    a = [e.positive.key for e in stage_examples(r, "bridged", 7, 6)]
    assert a == [e.positive.key for e in stage_examples(r, "bridged", 7, 6)]
    assert a != [e.positive.key for e in stage_examples(r, "bridged", 8, 6)]
    assert a != [e.positive.key for e in stage_examples(apply_overrides(r, ["seed=1"]), "bridged", 7, 6)]


def test_train_writes_checkpoint_recipe_losses_scores(tmp_path):
    out = train(_recipe(), tmp_path / "run", progress=False)
    assert Recipe.from_yaml((out / "recipe.yaml").read_text()) == _recipe()
    losses = json.loads((out / "losses.json").read_text())
    assert set(losses) == {"warmup", "bridged", "contrastive"} and all(len(v) == 2 for v in losses.values())
    scores = json.loads((out / "scores.json").read_text())
    assert {"overall", "meta_task", "split", "negatives", "ind_overall", "datasets"} <= set(scores)
    assert set(scores["meta_task"]) == {"classification", "vqa", "retrieval", "grounding"}
    assert set(scores["split"]) == {"ind", "ood"} and {"hard", "random"} <= set(scores["negatives"])
    assert "mae_decoder" not in str(load_file(str(out / "model.safetensors")).keys())
    assert (out / "stages" / "warmup" / runner.HEADS_FILE).is_file()
    from analysis.models import load_checkpoint

    model, _ = load_checkpoint(out)
    assert model.config.text_config.hidden_size == 32


def test_resume_runs_only_the_unfinished_stages(tmp_path, monkeypatch):
    recipe, out = _recipe(), tmp_path / "run"
    real = runner.run_stage
    ran = []

    def interrupted(recipe, stage, *args, **kwargs):
        if stage == "bridged":
            raise KeyboardInterrupt
        ran.append(stage)
        return real(recipe, stage, *args, **kwargs)

    monkeypatch.setattr(runner, "run_stage", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, out, progress=False)
    assert ran == ["warmup"] and not runner.is_complete(out)
    assert sorted(p.name for p in (out / "stages").iterdir()) == ["warmup"]  # no half-written stage dir
    warm_stamp = (out / "stages" / "warmup" / "stage.json").stat().st_mtime_ns

    def recording(recipe, stage, *args, **kwargs):
        ran.append(stage)
        return real(recipe, stage, *args, **kwargs)

    ran.clear()
    monkeypatch.setattr(runner, "run_stage", recording)
    train(recipe, out, progress=False)
    assert ran == ["bridged", "contrastive"] and runner.is_complete(out)
    assert (out / "stages" / "warmup" / "stage.json").stat().st_mtime_ns == warm_stamp

    # the resumed run ends exactly where an uninterrupted one does
    straight = train(recipe, tmp_path / "straight", progress=False)
    a, b = load_file(str(out / "model.safetensors")), load_file(str(straight / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)

    ran.clear()
    train(recipe, out, progress=False)  # complete: returns at once
    assert ran == []


def test_refuses_a_directory_holding_a_different_recipe(tmp_path, capsys):
    out = tmp_path / "run"
    train(_recipe("first", **{"stages.warmup": "null", "stages.bridged": "null", "eval.n_per_dataset": 0}), out,
          progress=False)
    other = _recipe("second", **{"stages.warmup": "null", "stages.bridged": "null", "eval.n_per_dataset": 0, "seed": 1})
    with pytest.raises(RecipeMismatch, match=r"holds recipe 'first'.*differs from recipe 'second' in name, seed"):
        train(other, out, progress=False)
    path = tmp_path / "second.yaml"
    path.write_text(other.to_yaml())
    assert main(["train", "--recipe", str(path), "--out", str(out), "--quiet"]) == 2
    assert "holds recipe 'first'" in capsys.readouterr().err
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    with pytest.raises(RecipeMismatch, match="holds no recipe.yaml"):
        train(other, tmp_path / "junk", progress=False)


def test_cli_train_with_overrides(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(_recipe("cli").to_yaml())
    code = main(["train", "--recipe", str(path), "--out", str(tmp_path / "o"), "--quiet",
                 "--set", "stages.warmup=null", "--set", "stages.bridged.steps=1", "--set", "recon_weight=0"])
    assert code == 0
    saved = Recipe.from_yaml((tmp_path / "o" / "recipe.yaml").read_text())
    assert saved.stages.warmup is None and saved.stages.bridged.steps == 1 and saved.recon_weight == 0
    assert "ind_overall" in capsys.readouterr().out
    assert main(["train", "--recipe", str(path), "--out", str(tmp_path / "p"), "--set", "recon_weight=2"]) == 2
    assert "recon_weight must lie in [0, 1]" in capsys.readouterr().err


def test_lora_backbone_trains_adapters_only(tmp_path):
    pytest.importorskip("peft")
    recipe = _recipe("lora", **{"lora.enabled": "true", "stages.warmup": "null", "eval.n_per_dataset": 0})
    model, _ = runner.build_model(recipe, torch.device("cpu"))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    out = train(recipe, tmp_path / "lora", progress=False)
    assert (out / "stages" / "bridged" / "adapter_model.safetensors").is_file()
    assert not any("lora" in k for k in load_file(str(out / "model.safetensors")))


def test_backbone_can_be_a_base_recipe_trained_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("COCOA_LENS_BASES", str(tmp_path / "bases"))
    base = apply_overrides(Recipe(name="base"), ["stages.pretrain.steps=2", "stages.pretrain.batch_size=4",
                                                 "backbone.hidden_size=32", "backbone.vision_width=32",
                                                 "eval.n_per_dataset=0", "device=cpu"])
    (tmp_path / "base.yaml").write_text(base.to_yaml())
    child = apply_overrides(Recipe(name="child"), [f"backbone.name={tmp_path / 'base.yaml'}",
                                                   "stages.contrastive.steps=1", "stages.contrastive.batch_size=4",
                                                   "eval.n_per_dataset=0", "device=cpu"])
    first = runner.base_checkpoint(child.backbone.name, progress=False)
    assert first.parent == tmp_path / "bases" and runner.is_complete(first)
    assert runner.base_checkpoint(child.backbone.name, progress=False) == first  # cached
    out = train(child, tmp_path / "child", progress=False)
    from analysis.models import load_checkpoint

    assert load_checkpoint(out)[0].config.text_config.hidden_size == 32
    with pytest.raises(ValueError, match="apply to the tiny backbones"):
        apply_overrides(child, ["backbone.hidden_size=64"])
