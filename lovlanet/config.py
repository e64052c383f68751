"""The model's configuration: one dataclass that names a variant and round-trips through JSON.

Variants are the paper's ablation axes (Tables 3 and 5), any subset of three components:

* ``kk`` — key–key attention in every block (no query projection);
* ``gauss`` — the Gaussian prior G added to the attention logits;
* ``reduce_mlp`` — no FFN in the final block.

``baseline`` is the empty set (timm's ViT unchanged) and ``full`` all three.  Names combine with
``+`` in any order (``gauss+kk`` is ``kk+gauss``).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Optional

COMPONENTS = ("kk", "gauss", "reduce_mlp")

# Canonical names, in the paper's table order.
VARIANTS = ("baseline", "kk", "gauss", "reduce_mlp", "kk+gauss", "kk+reduce_mlp", "gauss+reduce_mlp", "full")

_ALIASES = {"reducemlp": "reduce_mlp", "reduce-mlp": "reduce_mlp", "mlp": "reduce_mlp", "gaussian": "gauss"}

# The paper's class prompts are "Building", "Road", ...; CLIP-style templates help a pretrained text tower.
DEFAULT_TEMPLATE = "a satellite image of {}"

# LoveDA's six foreground classes, the paper's protocol (Table 1).
LOVEDA_CLASSES = ("building", "road", "water", "barren", "forest", "agriculture")

# OpenAI CLIP's normalization: what RemoteCLIP's (and timm's *_clip_*) weights expect.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def parse_variant(name: str) -> frozenset[str]:
    """``"kk+gauss"`` → ``{"kk", "gauss"}``; raises ``ValueError`` naming the valid choices."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"variant must be a non-empty string, one of {', '.join(VARIANTS)}; got {name!r}")
    key = name.strip().lower()
    if key == "baseline":
        return frozenset()
    if key == "full":
        return frozenset(COMPONENTS)
    parts = [_ALIASES.get(p.strip(), p.strip()) for p in key.split("+")]
    unknown = [p for p in parts if p not in COMPONENTS]
    if unknown or len(set(parts)) != len(parts):
        raise ValueError(f"unknown variant {name!r}: use one of {', '.join(VARIANTS)} "
                         f"(or components {', '.join(COMPONENTS)} joined by '+')")
    return frozenset(parts)


def variant_name(components: frozenset[str]) -> str:
    """The canonical name of a component set (inverse of :func:`parse_variant`)."""
    if not components:
        return "baseline"
    if components == frozenset(COMPONENTS):
        return "full"
    return "+".join(c for c in COMPONENTS if c in components)


@dataclass
class LoVLANetConfig:
    """Everything needed to rebuild a LoVLANet (weights come separately).

    Attributes:
        variant: one of :data:`VARIANTS` or a ``+`` combination of :data:`COMPONENTS`.
        class_names: the classes, in logit order; each becomes a prompt through ``prompt_template``.
        img_size: the input size the positional embedding is stored at; any multiple of the patch
            size runs (the embedding is resampled to the input's grid).
        sigma: σ of the Gaussian prior in token units (variants with ``gauss``).
        learnable_sigma: learn σ per head and block (initialized at ``sigma``).
        prompt_template: ``str.format`` template with one ``{}`` for the class name.
        freeze_text: keep the text tower frozen (its class embeddings are then computed once and cached).
        feature_blocks: 1-based ViT blocks whose outputs become F1..F4 (strides 4/8/16/32).
        decoder_dim: channels of the SFF decoder.
        class_token: keep the CLS token as a prefix token, outside the prior (see README: the pretrained
            CLIP weights expect it, and the baseline must equal timm's ViT); it never reaches the decoder.
        last_block_residual: with ``reduce_mlp``, keep the attention residual of the final block
            (``x + attn(norm1(x))``); ``False`` (default) returns ``attn(norm1(x))`` as NACLIP does.
        align_weight: λ of the vision–language alignment loss.
        ignore_index: label value excluded from the loss.
        attn_backend: kkattn backend (``"auto"`` picks the fused kernel for the device).
        visual_model / text_model: timm and open_clip model names.
        visual_kwargs: overrides for ``timm.create_model`` (e.g. a small ``depth``/``embed_dim`` for tests).
        mean / std: input normalization the visual weights expect.
    """

    variant: str = "full"
    class_names: tuple[str, ...] = LOVEDA_CLASSES
    img_size: int = 1024
    sigma: float = 2.0
    learnable_sigma: bool = False
    prompt_template: str = DEFAULT_TEMPLATE
    freeze_text: bool = True
    feature_blocks: tuple[int, ...] = (3, 6, 9, 12)
    decoder_dim: int = 256
    class_token: bool = True
    last_block_residual: bool = False
    align_weight: float = 1.0
    ignore_index: int = 255
    attn_backend: str = "auto"
    visual_model: str = "vit_base_patch32_clip_quickgelu_224"
    text_model: str = "ViT-B-32-quickgelu"
    visual_kwargs: dict[str, Any] = field(default_factory=dict)
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def __post_init__(self):
        self.class_names = tuple(self.class_names)
        self.feature_blocks = tuple(int(b) for b in self.feature_blocks)
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        self.visual_kwargs = dict(self.visual_kwargs)
        self.variant = variant_name(parse_variant(self.variant))
        if not self.class_names or not all(isinstance(c, str) and c.strip() for c in self.class_names):
            raise ValueError(f"class_names must be a non-empty list of non-empty strings, got {self.class_names!r}")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class_names has duplicates: {self.class_names!r}")
        if not (isinstance(self.sigma, (int, float)) and math.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(f"sigma must be a positive finite number, got {self.sigma!r}")
        if self.prompt_template.count("{}") != 1:
            raise ValueError(f"prompt_template must contain exactly one '{{}}', got {self.prompt_template!r}")
        if len(self.feature_blocks) != 4 or sorted(self.feature_blocks) != list(self.feature_blocks) \
                or self.feature_blocks[0] < 1:
            raise ValueError(f"feature_blocks must be four increasing 1-based block numbers, got {self.feature_blocks}")
        if self.img_size <= 0 or self.decoder_dim <= 0:
            raise ValueError("img_size and decoder_dim must be positive")

    @property
    def components(self) -> frozenset[str]:
        return parse_variant(self.variant)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def prompts(self) -> list[str]:
        return [self.prompt_template.format(name) for name in self.class_names]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LoVLANetConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown LoVLANetConfig fields: {', '.join(unknown)}")
        return cls(**data)

    def to_json(self, indent: Optional[int] = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> "LoVLANetConfig":
        return cls.from_dict(json.loads(text))
