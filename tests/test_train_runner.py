"""The stage runner end to end on the tiny backbone: loss falls, resume (mid-stage too), idempotence, refusing a
different recipe, and nothing wrong passing silently (NaN losses, no stages, damaged outputs, collapsed scores)."""

import json
import os
import re

import pytest
import torch
from safetensors.torch import load_file

import analysis.train.runner as runner
from analysis.cli import main
from analysis.errors import UsageError
from analysis.metrics.retrieval import NonFiniteEmbeddings
from analysis.models import ALL_TINY_BACKBONES
from analysis.train import Recipe, RecipeMismatch, apply_overrides, load_recipe, train
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
        f"stages.{stage}.warmup_ratio=0.1", "data.batching=mixed", "device=cpu",
        *([f"stages.bridged.recon_weight={recon_weight}"] if stage == "bridged" else [])])
    model, processor = runner.build_model(recipe, device=torch.device("cpu"))
    decoder = runner.make_decoder(model, processor) if stage == "warmup" else None
    make = make_batch_fn(recipe, stage, processor, model, mask_token_id(processor.tokenizer))
    curve = runner.run_stage(recipe, stage, model, decoder, prefetch(make, range(steps)), torch.device("cpu"),
                             progress=False)
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
    from analysis.checkpoints import open_checkpoint

    assert open_checkpoint(out).model.config.text_config.hidden_size == 32


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
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical

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
                 "--set", "stages.warmup=null", "--set", "stages.bridged.steps=1",
                 "--set", "stages.bridged.recon_weight=0"])
    assert code == 0
    saved = Recipe.from_yaml((tmp_path / "o" / "recipe.yaml").read_text())
    assert saved.stages.warmup is None and saved.stages.bridged.steps == 1 and saved.stages.bridged.recon_weight == 0
    assert "ind_overall" in capsys.readouterr().out
    assert main(["train", "--recipe", str(path), "--out", str(tmp_path / "p"), "--set",
                 "stages.bridged.recon_weight=2"]) == 2
    assert "stages.bridged.recon_weight must lie in [0, 1]" in capsys.readouterr().err


@pytest.mark.parametrize("backbone", ALL_TINY_BACKBONES)
def test_default_lora_targets_every_projection_of_the_llm_and_the_vit(backbone):
    """The released settings put LoRA on the LLM's and the ViT's projections: every Linear inside a decoder layer
    or a vision block of each backbone family is adapted (found by walking the modules, not from the target list)."""
    pytest.importorskip("peft")
    from peft.tuners.lora import LoraLayer

    recipe = _recipe("lora", **{"lora.enabled": "true", "backbone.name": backbone})
    model, _ = runner.build_model(recipe, device=torch.device("cpu"))
    blocks = [m for n, m in model.named_modules() if re.search(r"(language_model\.layers|visual\.blocks)\.\d+$", n)]
    inside = [(n, m) for b in blocks for n, m in b.named_modules()
              if not any(part == "base_layer" or part.startswith("lora_") for part in n.split("."))]
    missed = sorted({n for n, m in inside if isinstance(m, torch.nn.Linear)})
    assert blocks and any(isinstance(m, LoraLayer) for _, m in inside) and not missed, missed


def test_lora_backbone_trains_adapters_only(tmp_path):
    pytest.importorskip("peft")
    recipe = _recipe("lora", **{"lora.enabled": "true", "stages.warmup": "null", "eval.n_per_dataset": 0})
    model, _ = runner.build_model(recipe, device=torch.device("cpu"))
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
    from analysis.checkpoints import open_checkpoint

    assert open_checkpoint(out).model.config.text_config.hidden_size == 32
    with pytest.raises(ValueError, match="apply to the tiny backbones"):
        apply_overrides(child, ["backbone.hidden_size=64"])
    # the child is current for its recipe and base; another recipe, or an edited base recipe, makes it stale
    assert runner.is_current(out, child)
    assert not runner.is_current(out, apply_overrides(child, ["stages.contrastive.steps=2"]))
    (tmp_path / "base.yaml").write_text(apply_overrides(base, ["stages.pretrain.steps=3"]).to_yaml())
    assert not runner.is_current(out, child)


# -- nothing wrong passes silently (issue 12) --------------------------------------------------------
def _short(name="s", **extra) -> Recipe:
    """One short contrastive stage, no scoring: seconds to train."""
    return _recipe(name, **{"stages.warmup": "null", "stages.bridged": "null", "stages.contrastive.steps": 4,
                            "eval.n_per_dataset": 0, **extra})


def test_a_non_finite_loss_stops_training_and_saves_nothing_of_the_stage(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(runner.NonFiniteTraining, match=r"'?s'?: the gradient norm is nan at stage contrastive, "
                                                        r"step 1.*stages.contrastive.lr \(now 1000\)"):
        train(_short(**{"stages.contrastive.lr": 1e3}), out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["recipe.yaml"]  # no stage, weights or scores


@pytest.mark.parametrize("what", ["loss", "gradient norm"])
def test_the_first_non_finite_loss_or_gradient_names_stage_and_step(tmp_path, monkeypatch, what):
    real = runner.stage_loss_fn

    def poisoned(recipe, stage, model, decoder):
        fn, calls = real(recipe, stage, model, decoder), []

        def loss(batch):
            terms = fn(batch)
            calls.append(1)
            if len(calls) == 2:  # step 1: the loss itself, or only its gradient (d sqrt(x)/dx at 0 is inf)
                p = next(model.parameters())
                bad = torch.tensor(float("inf")) if what == "loss" else torch.sqrt((p * 0).sum())
                terms["loss"] = terms["loss"] + bad
            return terms
        return loss

    monkeypatch.setattr(runner, "stage_loss_fn", poisoned)
    with pytest.raises(runner.NonFiniteTraining, match=f"the {what} is (inf|nan) at stage bridged, step 1"):
        train(_recipe("p", **{"stages.warmup": "null", "eval.n_per_dataset": 0}), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "stages").exists()


def test_a_recipe_without_stages_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(UsageError, match="has no stage with steps > 0"):
        train(_short(**{"stages.contrastive": "null"}), tmp_path / "run", progress=False)
    with pytest.raises(UsageError, match="has no stage with steps > 0"):
        train(_short(**{"stages.contrastive.steps": 0}), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def _weights(out):
    return load_file(str(out / "model.safetensors"))


def test_mid_stage_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, monkeypatch):
    recipe = _recipe("mid", **{"stages.bridged": "null", "stages.warmup.steps": 5, "stages.warmup.save_every": 2,
                               "stages.contrastive.steps": 3, "eval.n_per_dataset": 0})
    straight = train(recipe, tmp_path / "straight", progress=False)
    real, out = runner.prefetch, tmp_path / "run"

    def killed_after(n):
        def stream(make, steps, *args):
            for i, batch in enumerate(real(make, steps, *args)):
                if i == n:
                    raise KeyboardInterrupt
                yield batch
        return stream

    monkeypatch.setattr(runner, "prefetch", killed_after(3))  # warm-up steps 0-2 run; state saved after step 1
    with pytest.raises(KeyboardInterrupt):
        train(recipe, out, progress=False)
    partial = runner.load_partial(runner.partial_path(out, "warmup"))
    assert partial["step"] == 2 and len(partial["curve"]) == 2 and not (out / "stages" / "warmup").exists()
    monkeypatch.setattr(runner, "prefetch", killed_after(2))  # resumed: steps 2-3 run, saved again after 3
    with pytest.raises(KeyboardInterrupt):
        train(recipe, out, progress=False)
    assert runner.load_partial(runner.partial_path(out, "warmup"))["step"] == 4
    monkeypatch.setattr(runner, "prefetch", real)
    train(apply_overrides(recipe, ["stages.warmup.save_every=3"]), out, progress=False)  # save_every: no mismatch
    a, b = _weights(out), _weights(straight)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((out / "losses.json").read_text()) == json.loads((straight / "losses.json").read_text())
    assert not runner.partial_path(out, "warmup").exists()
    heads = [runner.load_heads(d / "stages" / "warmup") for d in (out, straight)]
    assert all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])


def test_a_finished_directory_with_damaged_weights_is_not_returned_as_done(tmp_path, capsys):
    out = train(_short(), tmp_path / "run", progress=False)
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(_short().to_yaml())
    argv = ["train", "--recipe", str(recipe_file), "--out", str(out), "--quiet"]
    assert main(argv) == 0
    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100:-96] = b"\x7f\x7f\x7f\x7f"  # the same size: only the recorded digest can tell
    weights.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(argv) == 2
    assert f"the weights in {out} changed after training finished" in capsys.readouterr().err
    weights.write_bytes(bytes(data[:-1000]))  # truncated
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"the finished checkpoint {out} is damaged" in err and "model.safetensors is truncated" in err


def test_outputs_get_the_users_umask(tmp_path):
    old = os.umask(0o027)
    try:
        out = train(_short(), tmp_path / "run", progress=False)
    finally:
        os.umask(old)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {"recipe.yaml", "scores.json", "model.safetensors", "stage.json"} <= {p.name for p in files}
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {"0o640"}
    assert {oct(p.stat().st_mode & 0o777) for p in out.rglob("*") if p.is_dir()} == {"0o750"}


def test_scores_refuse_nan_embeddings_and_flag_collapsed_ones():
    recipe = _short(**{"eval.n_per_dataset": 2})
    model, processor = runner.build_model(recipe, device=torch.device("cpu"))
    model.eval()
    healthy = runner.score(model, processor, recipe, name="ckpt")
    assert not healthy["degenerate"] and healthy["overall_tie_robust"] <= healthy["overall"]
    norm = model.model.language_model.norm.weight
    with torch.no_grad():
        norm.zero_()  # every embedding is the zero vector: MMEB's rule would give 1.0
    collapsed = runner.score(model, processor, recipe, name="ckpt")
    assert collapsed["degenerate"] and collapsed["overall"] == 1.0
    assert collapsed["overall_tie_robust"] < 0.5 and collapsed["ties"] == sum(r["n"] for r in collapsed["datasets"])
    with torch.no_grad():
        norm.fill_(float("nan"))
    with pytest.raises(NonFiniteEmbeddings, match=r"/ind of ckpt: query and candidate embeddings hold NaN"):
        runner.score(model, processor, recipe, name="ckpt")


def test_the_shipped_base_captioner_is_found_without_retraining():
    """A change to the recipe schema (a new result-neutral key) must not orphan the shipped base."""
    from analysis.train.runner import REPO_ROOT, bases_dir, is_complete, result_digest

    recipe = load_recipe(REPO_ROOT / "experiments/recipes/base_captioner.yaml")
    assert is_complete(bases_dir() / f"base_captioner-{result_digest(recipe)}")
