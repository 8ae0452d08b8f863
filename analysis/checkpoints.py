"""One opener for every command: a tiny backbone name, a Hugging Face directory or a PEFT adapter directory.

  tiny-qwen2.5-vl, tiny-qwen2-vl   a random-initialised embedded backbone (`seed`)
  DIR with config.json            a `save_pretrained` directory (one or sharded safetensors with an index)
  DIR with adapter_config.json    a PEFT LoRA / DoRA adapter: its base (`base=` or the adapter's
                                  `base_model_name_or_path`, a local directory, never a hub) is loaded and
                                  the adapter merged into it, so captures see plain linear layers

Before anything is loaded, the files are checked (JSON parses, each safetensors header parses and its
data fits the file) so a damaged checkpoint is one clear line naming the file. A directory may declare
the embedder it is (`preset.json`: `{"preset": "vlm2vec", ...options}`); one trained here carries its
recipe (`recipe.yaml`) and embeds with the `plain` preset under the recipe's `embed_mask`.
"""

from __future__ import annotations

import contextlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

from analysis.arguments import DTYPE_NAMES
from analysis.errors import UsageError
from analysis.models import ALL_TINY_BACKBONES, MODEL_CLASSES, build_tiny
from analysis.presets import Preset, preset_for

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}
CONFIG, ADAPTER_CONFIG, PRESET_FILE, RECIPE_FILE = "config.json", "adapter_config.json", "preset.json", "recipe.yaml"


@dataclass
class Opened:
    """An opened checkpoint: the model (eval mode), its processor and what the directory says about itself."""

    model: torch.nn.Module
    processor: object
    name: str                                       # resolved path, or "tiny-... (random init, seed s)"
    path: Path | None = None                        # the directory (the adapter's, for an adapter)
    base: Path | None = None                        # an adapter's base directory
    declared: dict = field(default_factory=dict)    # preset.json, or {}
    recipe: dict | None = None                      # recipe.yaml of a checkpoint trained here

    def preset(self, name: str | Preset | None = None) -> Preset:
        """The embedder preset: `name` if given, else the declared one, else `plain` under the recipe's mask."""
        return preset_for(self.declared, self.recipe, name=name)

    @property
    def trained_with_reconstruction(self) -> bool:
        """Whether the recipe it was trained with ran EOS-bridged reconstruction (stage 2 with steps and λ > 0)."""
        from analysis.train.recipe import Recipe

        return self.recipe is not None and Recipe.from_dict(self.recipe).grid_point()[1] > 0


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """`"bfloat16"` -> `torch.bfloat16`; None stays None; anything else names the valid choices."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    return DTYPES[name]


def parse_device(device: str | torch.device | None) -> torch.device:
    """A device that exists on this machine (default cpu); `cuda` without a GPU says so."""
    try:
        dev = torch.device(device or "cpu")
    except RuntimeError as err:
        raise UsageError(f"unknown device {device!r} ({err}); use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {device}: MPS is not available on this machine; use --device cpu")
    return dev


def read_json_file(path: Path) -> dict:
    """A JSON object from `path`; a parse error names the file."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UsageError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}); restore the file") from None


def check_safetensors(path: Path) -> None:
    """Raise naming `path` unless its header parses and its tensors' data fits the file (no data read)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise UsageError(f"{path} is truncated ({size} bytes): re-save or re-copy the checkpoint")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise UsageError(f"{path} is truncated (header of {n} bytes in a {size}-byte file): re-copy it")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UsageError(f"{path} is not a safetensors file (unreadable header): re-save the checkpoint") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise UsageError(f"{path} is truncated or damaged (tensors need {8 + n + end} bytes, the file has {size}): "
                         f"re-copy the checkpoint")


def check_files(directory: Path) -> None:
    """Integrity of a checkpoint directory's JSON and safetensors files (cheap: headers and sizes only)."""
    for path in sorted(directory.glob("*.json")):
        read_json_file(path)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        for shard in sorted(set(read_json_file(index).get("weight_map", {}).values())):
            if not (directory / shard).is_file():
                raise UsageError(f"{directory} lacks {shard}, named in {index.name}: copy every shard")
    for path in sorted(directory.glob("*.safetensors")):
        check_safetensors(path)


@contextlib.contextmanager
def quiet_hf():
    """Hide transformers' per-file progress bars ("Loading weights", "Writing model shards") inside the block."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def open_checkpoint(source, *, dtype: torch.dtype | str | None = None, device: str | torch.device | None = None,
                    base: str | Path | None = None, attn_implementation: str = "eager", seed: int = 0,
                    device_map: str | dict | None = None) -> Opened:
    """Open `source` (see the module docstring) in `dtype` (default float32) on `device` (default cpu).

    `device_map` ("auto", or a Hugging Face device map) splits a checkpoint directory's model over the
    visible devices as `from_pretrained` places it, instead of moving it whole to `device`.
    """
    dtype, dev = parse_dtype(dtype) or torch.float32, parse_device(device)
    if device_map is not None and device is not None:
        raise UsageError(f"--device {device} and --device-map {device_map} both place the model: give one of them")
    if device_map is not None and str(source) in ALL_TINY_BACKBONES:
        raise UsageError(f"--device-map applies to checkpoint directories; {source} is a tiny backbone that fits one "
                         f"device: use --device")
    if str(source) in ALL_TINY_BACKBONES:
        model, processor = build_tiny(str(source), seed=seed, attn_implementation=attn_implementation)
        return Opened(model.to(dev, dtype=dtype), processor, f"{source} (random init, seed {seed})")
    path = Path(source).expanduser()
    if not path.is_dir():
        raise UsageError(f"no checkpoint at {path}: give a Hugging Face directory (config.json), a PEFT adapter "
                         f"directory (adapter_config.json) or a tiny backbone name ({', '.join(ALL_TINY_BACKBONES)})")
    check_files(path)
    base_dir = None
    if (path / ADAPTER_CONFIG).is_file():
        base_dir = _adapter_base(path, base)
        with quiet_hf():
            model, processor = _open_adapter(path, base_dir, dtype, attn_implementation, device_map)
    elif (path / CONFIG).is_file():
        with quiet_hf():
            model, processor = _open_full(path, dtype, attn_implementation, device_map)
    else:
        raise UsageError(f"{path} holds neither {CONFIG} nor {ADAPTER_CONFIG}: not a checkpoint directory")
    declared = read_json_file(path / PRESET_FILE) if (path / PRESET_FILE).is_file() else {}
    model = model if device_map is not None else model.to(dev)  # a dispatched model stays where it was put
    return Opened(model.eval(), processor, str(path.resolve()), path, base_dir, declared, _recipe(path))


def _recipe(path: Path) -> dict | None:
    import yaml

    file = path / RECIPE_FILE
    return yaml.safe_load(file.read_text()) if file.is_file() else None


def _model_class(path: Path):
    model_type = read_json_file(path / CONFIG).get("model_type")
    if model_type not in MODEL_CLASSES:
        raise UsageError(f"{path} holds a {model_type!r} model; cocoa-lens opens: {', '.join(MODEL_CLASSES)}")
    return MODEL_CLASSES[model_type]


def _processor(*directories: Path):
    from transformers import AutoProcessor

    for directory in directories:
        if any((directory / f).is_file() for f in ("processor_config.json", "preprocessor_config.json")):
            return AutoProcessor.from_pretrained(directory, local_files_only=True)
    raise UsageError(f"no processor files (preprocessor_config.json) in {' or '.join(map(str, directories))}: "
                     f"save the processor beside the weights (processor.save_pretrained)")


def _open_full(path: Path, dtype: torch.dtype, attn_implementation: str, device_map=None):
    placed = {} if device_map is None else {"device_map": device_map}
    model = _model_class(path).from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation,
                                               local_files_only=True, **placed)
    return model, _processor(path)


def _adapter_base(path: Path, base: str | Path | None) -> Path:
    """The base directory of the adapter at `path`: `base` if given, else the one its config names."""
    named = read_json_file(path / ADAPTER_CONFIG).get("base_model_name_or_path") or ""
    if base:
        candidates = [Path(base).expanduser()]
    else:  # an absolute path, or one relative to the working directory or to the adapter
        candidates = [Path(named).expanduser(), path / named] if named else []
    base_dir = next((c for c in candidates if (c / CONFIG).is_file()), None)
    if base_dir is None:
        given = f"--base {base} has no {CONFIG}" if base else f"{ADAPTER_CONFIG} names {named!r}, not a local directory"
        raise UsageError(f"the adapter at {path} needs its base model: {given}; pass --base /path/to/the/base "
                         f"(a Hugging Face directory)")
    check_files(base_dir)
    return base_dir


def _open_adapter(path: Path, base_dir: Path, dtype: torch.dtype, attn_implementation: str, device_map=None):
    from peft import PeftModel

    model, processor = _open_full(base_dir, dtype, attn_implementation, device_map)
    if any((path / f).is_file() for f in ("processor_config.json", "preprocessor_config.json")):
        processor = _processor(path)
    return PeftModel.from_pretrained(model, str(path)).merge_and_unload(), processor
