"""Recipe: one YAML/JSON-serialisable description of a training run.

A recipe names a backbone (an embedded tiny backbone, optionally widened, or a local Hugging Face
directory), the stages to run (`warmup`, `bridged`, `contrastive`; each optional, run in that order),
each with the settings it uses (stage 2 holds the recon weight λ, the InfoNCE stages their temperature),
the mask used for embedding (`embed_mask`), the seed and the device (an optional `pretrain` stage, plain
captioning, can run first to make a base checkpoint). Parsing is strict: unknown keys and bad values raise
`UsageError` (a `ValueError`) listing the valid ones.

`embed_mask` stays on the recipe, not on a stage: it belongs to the checkpoint (evaluation, captures and
embedder presets read it), and both InfoNCE stages embed under it. Recipes written before the stage settings
moved (top-level `recon_weight`, `temperature`, `symmetric`; e.g. the recipe.yaml of an older checkpoint)
still load: `migrated` moves each key onto the stages that use it.

    recipe = Recipe.from_yaml(Path("experiments/recipes/cocoa_bridged.yaml").read_text())
    recipe = apply_overrides(recipe, ["stages.bridged.steps=100", "stages.bridged.recon_weight=0.5"])
    recipe.to_yaml()   # round-trips: Recipe.from_yaml(recipe.to_yaml()) == recipe
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from analysis.data.mini_mmeb import TASK_NAMES
from analysis.errors import UsageError
from analysis.io import read_yaml, yaml_problem
from analysis.masks import MASK_TYPES
from analysis.models import ALL_TINY_BACKBONES

STAGE_NAMES = ("pretrain", "warmup", "bridged", "contrastive")
EMBED_MASKS = ("causal", "bidirectional")
SCHEDULES = ("cosine", "linear", "constant")
BATCHING = ("task", "mixed")
DTYPES = ("auto", "float32", "bfloat16", "float16")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
RESULT_NEUTRAL = ("save_every",)  # stage keys that do not change the result: a run may resume under others
# Settings once kept on the recipe, now on the stages that use them (see `migrated`).
MOVED_TO_STAGES = {"recon_weight": ("bridged",), "temperature": ("bridged", "contrastive"),
                   "symmetric": ("bridged", "contrastive")}
# LLM projections and ViT projections of Qwen2-VL (fc1/fc2), Qwen2.5-VL (gate/up/down, qkv/proj) and Qwen3-VL
# (linear_fc1/linear_fc2, names its patch mergers share).
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "qkv", "proj", "fc1",
                "fc2", "linear_fc1", "linear_fc2"]


@dataclass
class Backbone:
    """`name`: a tiny backbone (`tiny-qwen2.5-vl`, `tiny-qwen2-vl`), a local HF directory, or a recipe file
    (`*.yaml` / `*.json`) whose final checkpoint is the starting point ("base"): it is trained on first use
    and cached (see `analysis.train.runner.base_checkpoint`), as CoCoA starts from a pretrained Qwen2-VL.

    The sizes widen / deepen the tiny backbones only (None = `analysis.models` defaults).
    """

    name: str = "tiny-qwen2.5-vl"
    hidden_size: int | None = None
    num_hidden_layers: int | None = None
    vision_width: int | None = None
    attn_implementation: str = "sdpa"

    @property
    def is_tiny(self) -> bool:
        return self.name in ALL_TINY_BACKBONES

    @property
    def is_recipe(self) -> bool:
        return self.name.endswith((".yaml", ".yml", ".json"))

    def tiny_sizes(self) -> dict[str, int]:
        return {k: v for k, v in (("hidden_size", self.hidden_size), ("num_hidden_layers", self.num_hidden_layers),
                                  ("vision_width", self.vision_width)) if v is not None}

    def validate(self, path: str) -> None:
        _choice(self.attn_implementation, ATTN_IMPLEMENTATIONS, f"{path}.attn_implementation")
        if not self.is_tiny and self.tiny_sizes():
            raise UsageError(f"{path}: hidden_size / num_hidden_layers / vision_width apply to the tiny backbones "
                             f"({', '.join(ALL_TINY_BACKBONES)}) only, not to {self.name!r}")
        for key, value in self.tiny_sizes().items():
            _positive(value, f"{path}.{key}")


@dataclass
class Stage:
    """Optimisation settings shared by every stage: AdamW, linear warm-up then `schedule`.

    `vision_lr_scale` multiplies the learning rate of the vision tower (a from-scratch tiny ViT learns
    slower than the decoder at the same rate). `save_every` > 0 saves the stage's state every that many
    steps, so an interrupted run resumes mid-stage (exactly as if uninterrupted); 0 saves at the stage's
    end only. It does not change the result, so a run may resume under another `save_every`."""

    steps: int = 100
    lr: float = 1e-3
    batch_size: int = 32
    schedule: str = "cosine"
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    vision_lr_scale: float = 1.0
    save_every: int = 0

    def validate(self, path: str) -> None:
        _positive(self.vision_lr_scale, f"{path}.vision_lr_scale")
        if self.steps < 0 or self.save_every < 0:
            raise UsageError(f"{path}: steps and save_every must be >= 0; got {self.steps} and {self.save_every}")
        _positive(self.lr, f"{path}.lr")
        if self.batch_size < 2:
            raise UsageError(f"{path}.batch_size must be >= 2 (in-batch negatives); got {self.batch_size}")
        _choice(self.schedule, SCHEDULES, f"{path}.schedule")
        _unit(self.warmup_ratio, f"{path}.warmup_ratio", closed=True)
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise UsageError(f"{path}: weight_decay and grad_clip must be >= 0 (grad_clip 0 = off)")


@dataclass
class PretrainStage(Stage):
    """Stage 0 (the MLLM's own generative training, not CoCoA): next-token loss on every B token of
    `[A][EOS][B]` under `mask` (causal), inputs unmasked. Use it to make a captioning base checkpoint
    that every recipe of an ablation then starts from, as CoCoA starts from a pretrained Qwen2-VL."""

    mask: str = "causal"

    def validate(self, path: str) -> None:
        super().validate(path)
        _choice(self.mask, MASK_TYPES, f"{path}.mask")


@dataclass
class WarmupStage(Stage):
    """Stage 1: `[image][caption]` under `mask`; MNTP on `mntp_prob` of text + MAE on `mae_ratio` of image tokens."""

    mask: str = "bidirectional"
    mntp_prob: float = 0.2
    mae_ratio: float = 0.4
    mae_weight: float = 0.5

    def validate(self, path: str) -> None:
        super().validate(path)
        _choice(self.mask, MASK_TYPES, f"{path}.mask")
        _unit(self.mntp_prob, f"{path}.mntp_prob")
        _unit(self.mae_ratio, f"{path}.mae_ratio")
        if self.mae_weight < 0:
            raise UsageError(f"{path}.mae_weight must be >= 0; got {self.mae_weight}")


@dataclass
class ContrastiveStage(Stage):
    """Stage 3: InfoNCE on `[query][EOS]` / `[target][EOS]`, both under the recipe's `embed_mask`, at
    `temperature` (`symmetric` adds the target -> query direction).

    `chunk_size` (null = off): gradient caching over chunks of that many rows (`analysis.train.gradcache`),
    e.g. the paper's global batch 1024 on 8 GPUs, 128 rows each, in chunks of 32."""

    temperature: float = 0.02
    symmetric: bool = False
    chunk_size: int | None = None

    def validate(self, path: str) -> None:
        super().validate(path)
        _positive(self.temperature, f"{path}.temperature")
        if self.chunk_size is not None:
            _positive(self.chunk_size, f"{path}.chunk_size")


@dataclass
class BridgedStage(ContrastiveStage):
    """Stage 2: `[A][EOS][B]` under `mask`, MNTP on `mntp_prob` of B, weighted by `recon_weight` λ: the stage
    optimises `λ·L_recon + (1-λ)·L_infonce`, its InfoNCE part set as in a contrastive stage (`temperature`,
    `symmetric`, `chunk_size`, used only when λ < 1)."""

    mask: str = "eos_bridged"
    mntp_prob: float = 0.7
    recon_weight: float = 1.0

    def validate(self, path: str) -> None:
        super().validate(path)
        _choice(self.mask, MASK_TYPES, f"{path}.mask")
        _unit(self.mntp_prob, f"{path}.mntp_prob")
        _unit(self.recon_weight, f"{path}.recon_weight", closed=True, low_closed=True)


@dataclass
class Stages:
    """The stages to run, in this order; a stage left out (null) or with 0 steps is skipped."""

    pretrain: PretrainStage | None = None
    warmup: WarmupStage | None = None
    bridged: BridgedStage | None = None
    contrastive: ContrastiveStage | None = None

    def active(self) -> list[tuple[str, Stage]]:
        return [(n, s) for n in STAGE_NAMES if (s := getattr(self, n)) is not None and s.steps > 0]


@dataclass
class LoRA:
    """Optional LoRA through peft (real-size backbones): released settings r=8, alpha=64."""

    enabled: bool = False
    r: int = 8
    alpha: int = 64
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))

    def validate(self, path: str) -> None:
        _positive(self.r, f"{path}.r")
        _positive(self.alpha, f"{path}.alpha")
        _unit(self.dropout, f"{path}.dropout", closed=True)
        if not self.target_modules:
            raise UsageError(f"{path}.target_modules must name at least one module")


@dataclass
class Data:
    """Training pairs from `analysis.data.training_examples`, drawn fresh for every step.

    `batching: task` draws each batch from one task (tasks cycle in a seeded order), so in-batch
    negatives are same-task answers, as MMEB training does; `mixed` mixes all `tasks` in every batch.
    A task listed twice is drawn twice as often. `hard_negatives` adds, per text target, that many
    copies with one attribute word changed (colour, shape, size, row, column, number) as extra
    negatives in every InfoNCE batch (contrastive stage and the λ < 1 branch of stage 2).
    """

    tasks: list[str] | None = None
    batching: str = "task"
    max_text_tokens: int | None = None
    hard_negatives: int = 0

    def validate(self, path: str) -> None:
        _choice(self.batching, BATCHING, f"{path}.batching")
        if self.tasks is not None:
            unknown = [t for t in self.tasks if t not in TASK_NAMES]
            if unknown or not self.tasks:
                raise UsageError(f"{path}.tasks: unknown or empty {unknown}; valid tasks: {', '.join(TASK_NAMES)}")
        if self.max_text_tokens is not None:
            _positive(self.max_text_tokens, f"{path}.max_text_tokens")
        if self.hard_negatives < 0:
            raise UsageError(f"{path}.hard_negatives must be >= 0; got {self.hard_negatives}")


@dataclass
class Eval:
    """Mini-MMEB scoring of the final checkpoint (`n_per_dataset` queries per dataset, fixed `seed`)."""

    n_per_dataset: int = 50
    seed: int = 0
    batch_size: int = 64

    def validate(self, path: str) -> None:
        if self.n_per_dataset < 0:
            raise UsageError(f"{path}.n_per_dataset must be >= 0 (0 = skip scoring); got {self.n_per_dataset}")
        _positive(self.batch_size, f"{path}.batch_size")


@dataclass
class Recipe:
    """A training run: a backbone, its stages, and what the trained checkpoint embeds with (`embed_mask`)."""

    name: str = "recipe"
    backbone: Backbone = field(default_factory=Backbone)
    stages: Stages = field(default_factory=Stages)
    embed_mask: str = "bidirectional"
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    lora: LoRA = field(default_factory=LoRA)
    data: Data = field(default_factory=Data)
    eval: Eval = field(default_factory=Eval)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        self.backbone.validate("backbone")
        for name in STAGE_NAMES:
            stage = getattr(self.stages, name)
            if stage is not None:
                stage.validate(f"stages.{name}")
        _choice(self.embed_mask, EMBED_MASKS, "embed_mask")
        _choice(self.dtype, DTYPES, "dtype")
        if not (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")):
            raise UsageError(f"device: unknown {self.device!r}; valid: auto, cpu, cuda, cuda:N, mps")
        self.lora.validate("lora")
        self.data.validate("data")
        self.eval.validate("eval")

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Recipe":
        return build_strict(cls, migrated(data), "recipe", top=True)

    @classmethod
    def from_yaml(cls, text: str) -> "Recipe":
        data = yaml.safe_load(text)
        return cls.from_dict({} if data is None else data)

    def total_steps(self) -> int:
        return sum(s.steps for _, s in self.stages.active())

    def require_stages(self) -> None:
        """Raise unless some stage has steps to run (training nothing would write an untrained model)."""
        if not self.stages.active():
            raise UsageError(f"recipe {self.name!r} has no stage with steps > 0; give one, e.g. "
                             f"--set stages.contrastive.steps=100 ({', '.join(STAGE_NAMES)})")

    def grid_point(self) -> tuple[str, float]:
        """Where the recipe sits in the ablation grid: (mask type, recon weight λ) of its stage 2.

        With stage 2 and λ > 0: its reconstruction mask and λ. Otherwise (no stage 2, or λ = 0, where the
        stage-2 mask is never used) the run is contrastive only: (`embed_mask`, 0).
        """
        bridged = self.stages.bridged
        if bridged is not None and bridged.steps > 0 and bridged.recon_weight > 0:
            return bridged.mask, bridged.recon_weight
        return self.embed_mask, 0.0

    def result_dict(self) -> dict[str, Any]:
        """The settings that decide the trained weights: `to_dict` without the result-neutral keys
        (`RESULT_NEUTRAL`) and, while LoRA is off, without LoRA's other settings (a new default target list
        does not make a full fine-tune stale)."""
        data = self.to_dict()
        for stage in data["stages"].values():
            for key in RESULT_NEUTRAL:
                (stage or {}).pop(key, None)
        if not self.lora.enabled:
            data["lora"] = {"enabled": False}
        return data

    def result_differences(self, other: "Recipe") -> list[str]:
        """Dotted keys of `result_dict` whose values differ (a run may resume under a recipe that differs elsewhere)."""
        return [k for k, _ in _diff(self.result_dict(), other.result_dict())]


def migrated(data: Any) -> Any:
    """`data` (a recipe mapping) with the settings of `MOVED_TO_STAGES` moved from the top level onto the stages
    that use them; a stage that is null or absent drops them (it never read them). A stage that sets the key
    itself to another value raises `UsageError`."""
    if not isinstance(data, dict) or not MOVED_TO_STAGES.keys() & data.keys():
        return data
    data = dict(data)
    stages = dict(data["stages"]) if isinstance(data.get("stages"), dict) else {}  # else left for build_strict
    for key in [k for k in MOVED_TO_STAGES if k in data]:
        value = data.pop(key)
        for owner in MOVED_TO_STAGES[key]:
            stage = stages.get(owner)
            if isinstance(stage, dict):
                if stage.get(key, value) != value:
                    raise UsageError(f"{key} is given twice, {value!r} at the top and {stage[key]!r} in "
                                     f"stages.{owner}: keep stages.{owner}.{key} only")
                stages[owner] = {**stage, key: value}
    if stages:
        data["stages"] = stages
    return data


def load_recipe(path: str | Path, *, overrides: Sequence[str] = ()) -> Recipe:
    """Read a recipe from YAML (or JSON, a subset of YAML) and apply `key=value` overrides."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no recipe at {path} (see experiments/recipes/ for examples)")
    data = read_yaml(path)
    try:
        recipe = Recipe.from_dict({} if data is None else data)
    except ValueError as err:
        raise UsageError(f"{path}: {err}") from None
    return apply_overrides(recipe, overrides)


def apply_overrides(recipe: Recipe, overrides: Sequence[str]) -> Recipe:
    """`["stages.bridged.steps=100", "stages.bridged.recon_weight=0.5", "stages.warmup=null"]` -> a new Recipe.

    Values are parsed as YAML scalars and coerced to the field's type (`1e-3` is a float, `null` clears
    an optional field, `a,b` fills a list). Setting a key inside a null stage creates that stage first.
    """
    data = recipe.to_dict()
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"override {item!r} is not key=value (e.g. stages.bridged.steps=100)")
        parts = key.strip().split(".")
        node, cls = data, Recipe
        for depth, part in enumerate(parts):
            hints = _hints(cls)
            if cls is Recipe and part in MOVED_TO_STAGES:
                raise UsageError(f"override {item!r}: {part} is set per stage now; use "
                                 + " or ".join(f"stages.{o}.{part}={raw.strip()}" for o in MOVED_TO_STAGES[part]))
            if part not in hints:
                where = ".".join(parts[:depth]) or "recipe"
                raise UsageError(f"unknown key {part!r} in {where} (override {item!r}); valid keys: {', '.join(hints)}")
            if depth == len(parts) - 1:
                try:
                    node[part] = yaml.safe_load(raw) if raw.strip() else ""
                except yaml.YAMLError as err:
                    raise UsageError(f"override {item!r}: the value is not valid YAML ({yaml_problem(err)}); "
                                     f"quote it or close its brackets") from None
                break
            sub = _dataclass_of(hints[part])
            if sub is None:
                where = ".".join(parts[:depth + 1])
                raise UsageError(f"{where} is a {hints[part]} value, it has no key {parts[depth + 1]!r}")
            if node.get(part) is None:
                node[part] = dataclasses.asdict(sub())
            node, cls = node[part], sub
    return Recipe.from_dict(data)


# -- strict, type-directed building -------------------------------------------------------------
def _hints(cls) -> dict[str, Any]:
    names = [f.name for f in dataclasses.fields(cls)]
    hints = typing.get_type_hints(cls)
    return {n: hints[n] for n in names}


def _dataclass_of(hint) -> type | None:
    for arg in (hint, *typing.get_args(hint)):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def build_strict(cls, data: Any, path: str, *, top: bool = False):
    """`cls(**data)` for a dataclass, each value coerced to its field's type (nested dataclasses too).

    Unknown keys, missing required keys and values of the wrong type raise `UsageError` naming `path` and
    the dotted key (keys of a `top` object are named without the prefix). Values are checked once, by the
    top object's `validate`, which checks its children with their dotted paths.
    """
    if not isinstance(data, dict):
        raise UsageError(f"{path} must be a mapping with keys {', '.join(_hints(cls))}; got {data!r}")
    hints = _hints(cls)
    unknown = [k for k in data if k not in hints]
    if unknown:
        raise UsageError(f"unknown key(s) {', '.join(map(str, unknown))} in {path}; valid keys: {', '.join(hints)}")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise UsageError(f"{path} lacks {', '.join(missing)} (keys: {', '.join(hints)})")
    kwargs = {k: _coerce(hints[k], v, k if top else f"{path}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def _coerce(hint, value: Any, path: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "~")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, path)
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        return build_strict(hint, {} if value is None else value, path)
    if origin is dict:
        if not isinstance(value, dict):
            raise UsageError(f"{path} must be a mapping; got {value!r}")
        return {_coerce(args[0], k, path): _coerce(args[1], v, f"{path}.{k}") for k, v in value.items()}
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"{path} must be a list; got {value!r}")
        return [_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.strip().lower() in ("true", "yes", "1")
        if not isinstance(value, bool):
            raise UsageError(f"{path} must be true or false; got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool):
            raise UsageError(f"{path} must be an integer; got {value!r}")
        try:
            number = float(value) if isinstance(value, (str, float)) else value
        except ValueError:
            raise UsageError(f"{path} must be an integer; got {value!r}") from None
        if not isinstance(number, (int, float)) or not math.isfinite(number) or number != int(number):
            raise UsageError(f"{path} must be an integer; got {value!r}")
        return int(number)
    if hint is float:
        if isinstance(value, bool):
            raise UsageError(f"{path} must be a number; got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise UsageError(f"{path} must be a number; got {value!r}") from None
        if not math.isfinite(number):
            raise UsageError(f"{path} must be a finite number; got {value!r}")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise UsageError(f"{path} must be a string; got {value!r}")
        return value
    raise TypeError(f"{path}: unsupported field type {hint}")


def _diff(a: Any, b: Any, prefix: str = "") -> list[tuple[str, tuple[Any, Any]]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in dict.fromkeys([*a, *b]):
            out += _diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
        return out
    return [] if a == b else [(prefix, (a, b))]


def _choice(value: str, valid: Sequence[str], path: str) -> None:
    if value not in valid:
        raise UsageError(f"{path}: unknown {value!r}; valid: {', '.join(valid)}")


def _positive(value: float, path: str) -> None:
    if not value > 0:
        raise UsageError(f"{path} must be > 0; got {value}")


def _unit(value: float, path: str, closed: bool = False, low_closed: bool = False) -> None:
    low_ok = value >= 0 if (closed or low_closed) else value > 0
    if not (low_ok and value <= 1):
        raise UsageError(f"{path} must lie in {'[' if closed or low_closed else '('}0, 1]; got {value}")
