"""TransformerLens architecture adapter for Qwen2-VL (`Qwen2VLForConditionalGeneration`).

TransformerLens 4.3 ships an adapter for Qwen2.5-VL but not for Qwen2-VL. The two share the text
decoder (Qwen2 layout: RMS norms, GQA attention with q/k/v biases, gated SiLU MLP, mRoPE computed
inside Hugging Face's attention) and differ in the vision tower:

  Qwen2.5-VL: windowed ViT, RMS block norms, gated MLP (gate_proj / up_proj / down_proj)
  Qwen2-VL:   plain ViT, LayerNorm block norms, two-layer QuickGELU MLP (fc1 / fc2)

so this adapter maps the same canonical names (`blocks.{l}.attn.hook_pattern`,
`blocks.{l}.hook_resid_post`, `vision_encoder.blocks.{i}.hook_out`, ...) onto Qwen2-VL's modules.
Attention and norms stay Hugging Face-native (hooked, never recomputed), which is what makes the
bridge's patterns and residuals equal Hugging Face's exactly.

TransformerLens finds adapters two ways: the `transformer_lens.architectures` entry point (declared
in pyproject.toml) fills the factory's registry, but `boot_transformers` resolves the architecture
name through the static `SUPPORTED_ARCHITECTURES` dict first; `register()` fills both.
"""

from __future__ import annotations

from typing import Any

from transformer_lens.factories import architecture_adapter_factory as factory
from transformer_lens.model_bridge.architecture_adapter import ArchitectureAdapter
from transformer_lens.model_bridge.generalized_components import (
    AttentionBridge,
    BlockBridge,
    EmbeddingBridge,
    LinearBridge,
    RMSNormalizationBridge,
    UnembeddingBridge,
    VisionProjectionBridge,
)
from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent
from transformer_lens.model_bridge.generalized_components.qwen3_5_vision_encoder import (
    Qwen3_5VisionBlockBridge,
    Qwen3_5VisionEncoderBridge,
)

ARCHITECTURE = "Qwen2VLForConditionalGeneration"


class Qwen2VLArchitectureAdapter(ArchitectureAdapter):
    """Qwen2-VL: Qwen2 text decoder at `model.language_model`, ViT at `model.visual`."""

    required_libraries: list[str] = ["torchvision"]
    required_libraries_group: str = "multimodal"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.cfg.is_multimodal = True
        self._set_rms_rotary_defaults()
        self.cfg.attn_implementation = "eager"  # boots eager (hook_pattern fires only there); lens.bridge.boot switches
        self.cfg.default_prepend_bos = False  # Qwen tokenizers have no BOS
        self._extract_vision_dims(cfg)
        vision = getattr(cfg, "vision_config", None)
        if vision is not None and getattr(vision, "embed_dim", None) is not None:
            # Qwen2-VL's vision `hidden_size` is the merger's output (text) width; its own is embed_dim.
            self.cfg.vision_hidden_size = vision.embed_dim
        self.weight_processing_conversions = {**self._qkvo_weight_conversions(include_biases=True)}

        vision_block = Qwen3_5VisionBlockBridge(
            name="blocks",
            submodules={
                "norm1": GeneralizedComponent(name="norm1"),  # LayerNorm, left native
                "norm2": GeneralizedComponent(name="norm2"),
                "attn": GeneralizedComponent(
                    name="attn", submodules={"qkv": LinearBridge(name="qkv"), "proj": LinearBridge(name="proj")}),
                "mlp": GeneralizedComponent(
                    name="mlp", submodules={"in": LinearBridge(name="fc1"), "out": LinearBridge(name="fc2")}),
            },
        )
        self.component_mapping = {
            "vision_encoder": Qwen3_5VisionEncoderBridge(
                name="model.visual",
                config=self.cfg,
                submodules={"pos_embed": GeneralizedComponent(name="rotary_pos_emb"), "blocks": vision_block},
            ),
            "vision_projector": VisionProjectionBridge(name="model.visual.merger"),
            "embed": EmbeddingBridge(name="model.language_model.embed_tokens"),
            "blocks": BlockBridge(
                name="model.language_model.layers",
                submodules={
                    "ln1": RMSNormalizationBridge(name="input_layernorm", config=self.cfg),
                    "ln2": RMSNormalizationBridge(name="post_attention_layernorm", config=self.cfg),
                    "attn": AttentionBridge(
                        name="self_attn",
                        config=self.cfg,
                        submodules={"q": LinearBridge(name="q_proj"), "k": LinearBridge(name="k_proj"),
                                    "v": LinearBridge(name="v_proj"), "o": LinearBridge(name="o_proj")},
                        maintain_native_attention=True,  # mRoPE lives in Hugging Face's forward
                        requires_attention_mask=True,
                    ),
                    "mlp": self._gated_mlp(),
                },
            ),
            "ln_final": RMSNormalizationBridge(name="model.language_model.norm", config=self.cfg),
            "unembed": UnembeddingBridge(name="lm_head", config=self.cfg),
        }


def register() -> None:
    """Make `boot_transformers` accept Qwen2-VL (idempotent; the entry point alone is not enough)."""
    factory.ArchitectureAdapterFactory.discover_entry_points()  # first, so it does not warn about us
    factory.SUPPORTED_ARCHITECTURES.setdefault(ARCHITECTURE, Qwen2VLArchitectureAdapter)
    factory.ArchitectureAdapterFactory.register_adapter(ARCHITECTURE, Qwen2VLArchitectureAdapter)
