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

# The architectures a config may name. A config also arrives inside checkpoints, which may come from
# anywhere: only these local model definitions are built (never a hub name, which timm and open_clip
# would download), and only within the bounds below (a 2 KB file must not allocate 100 GB).
VISUAL_MODELS = ("vit_base_patch32_clip_quickgelu_224", "vit_base_patch32_clip_224",
                 "vit_base_patch16_clip_quickgelu_224", "vit_base_patch16_clip_224")
TEXT_MODELS = ("ViT-B-32", "ViT-B-16")
TEXT_ACTIVATIONS = ("quickgelu", "gelu")
# visual_kwargs the encoder takes, with their bounds (ViT-L is 24 blocks, 1024 wide, 16 heads).
VISUAL_KWARGS = {"depth": (1, 24), "embed_dim": (16, 1024), "num_heads": (1, 16)}
# text_kwargs the text tower takes (open_clip's text_cfg), with their bounds.
TEXT_KWARGS = {"width": (32, 1024), "layers": (1, 24), "heads": (1, 16)}
MAX_IMG_SIZE = 4096        # the stored positional embedding: (4096/32)² tokens at 768 wide is 50 MB
MAX_DECODER_DIM = 1024
MAX_CLASSES = 256          # class indices are written as uint8 masks
MAX_NAME_CHARS = 200       # class names and the prompt template


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
        visual_model: the timm ViT, one of :data:`VISUAL_MODELS`.
        text_model: the open_clip text tower, one of :data:`TEXT_MODELS`.
        text_activation: ``"quickgelu"`` (default: OpenAI CLIP's activation, which RemoteCLIP was fine-tuned
            with) or ``"gelu"`` (what RemoteCLIP's own loading instructions build; the same weights give text
            embeddings that differ by about 2e-3).
        visual_kwargs: ``depth``/``embed_dim``/``num_heads`` overrides for ``timm.create_model`` (small models).
        text_kwargs: ``width``/``layers``/``heads`` overrides of the text tower (small models for CPU
            experiments and tests, which have no RemoteCLIP weights to load anyway).
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
    text_model: str = "ViT-B-32"
    text_activation: str = "quickgelu"
    visual_kwargs: dict[str, Any] = field(default_factory=dict)
    text_kwargs: dict[str, Any] = field(default_factory=dict)
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def __post_init__(self):
        """Check every field's type and bounds: nothing is built from a config that fails here."""
        if isinstance(self.text_model, str) and self.text_model.endswith("-quickgelu"):
            # open_clip's name for the QuickGELU tower (checkpoints before text_activation existed).
            self.text_model, self.text_activation = self.text_model.removesuffix("-quickgelu"), "quickgelu"
        _check_choice("visual_model", self.visual_model, VISUAL_MODELS)
        _check_choice("text_model", self.text_model, TEXT_MODELS)
        _check_choice("text_activation", self.text_activation, TEXT_ACTIVATIONS)
        from kkattn import BACKEND_NAMES

        _check_choice("attn_backend", self.attn_backend, BACKEND_NAMES)
        for name in ("class_names", "feature_blocks", "mean", "std"):
            if isinstance(getattr(self, name), (str, bytes)) or not isinstance(getattr(self, name), (list, tuple)):
                raise ValueError(f"{name} must be a list, got {getattr(self, name)!r}")
        self.class_names = tuple(self.class_names)
        if not 1 <= len(self.class_names) <= MAX_CLASSES or not all(
                isinstance(c, str) and c.strip() and len(c) <= MAX_NAME_CHARS for c in self.class_names):
            raise ValueError(f"class_names must be 1 to {MAX_CLASSES} non-empty strings of at most {MAX_NAME_CHARS} "
                             f"characters, got {_short(self.class_names)}")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class_names has duplicates: {self.class_names!r}")
        self.variant = variant_name(parse_variant(self.variant))
        _check_int("img_size", self.img_size, 32, MAX_IMG_SIZE)
        _check_int("decoder_dim", self.decoder_dim, 1, MAX_DECODER_DIM)
        _check_int("ignore_index", self.ignore_index, -1, 65535)
        for name in ("learnable_sigma", "freeze_text", "class_token", "last_block_residual"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not (_is_number(self.sigma) and self.sigma > 0):
            raise ValueError(f"sigma must be a positive finite number, got {self.sigma!r}")
        if not (_is_number(self.align_weight) and self.align_weight >= 0):
            raise ValueError(f"align_weight must be a finite number ≥ 0, got {self.align_weight!r}")
        if not isinstance(self.prompt_template, str) or self.prompt_template.count("{}") != 1 \
                or len(self.prompt_template) > MAX_NAME_CHARS:
            raise ValueError(f"prompt_template must contain exactly one '{{}}' (at most {MAX_NAME_CHARS} characters), "
                             f"got {_short(self.prompt_template)}")
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        if len(self.mean) != 3 or len(self.std) != 3 or not all(_is_number(x) for x in self.mean + self.std) \
                or min(self.std) <= 0:
            raise ValueError(f"mean and std must be three finite numbers each (std > 0), got {self.mean}, {self.std}")
        self.visual_kwargs = _check_kwargs("visual_kwargs", self.visual_kwargs, VISUAL_KWARGS, "embed_dim", "num_heads",
                                           (768, 12))
        self.text_kwargs = _check_kwargs("text_kwargs", self.text_kwargs, TEXT_KWARGS, "width", "heads", (512, 8))
        self.feature_blocks = tuple(self.feature_blocks)
        depth = self.visual_kwargs.get("depth", 12)
        if len(self.feature_blocks) != 4 or not all(isinstance(b, int) and not isinstance(b, bool)
                                                    for b in self.feature_blocks) \
                or sorted(self.feature_blocks) != list(self.feature_blocks) or self.feature_blocks[0] < 1 \
                or self.feature_blocks[-1] != depth:
            raise ValueError(f"feature_blocks must be four increasing 1-based block numbers ending at the last block "
                             f"({depth}), got {_short(self.feature_blocks)}")

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
        """From :meth:`to_dict`'s form; raises ``ValueError`` for anything else (unknown fields, bad values)."""
        if not isinstance(data, dict):
            raise ValueError(f"a LoVLANetConfig must be a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in set(data) - known)
        if unknown:
            raise ValueError(f"unknown LoVLANetConfig fields: {_short(', '.join(unknown))}")
        return cls(**data)

    def to_json(self, indent: Optional[int] = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> "LoVLANetConfig":
        return cls.from_dict(json.loads(text))


def _short(value: Any, limit: int = 80) -> str:
    """``repr`` cut to ``limit`` characters: values from files go into one-line error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {_short(value)}")


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {_short(value)}")


def _check_kwargs(name: str, value: Any, bounds: dict, width: str, heads: str, defaults: tuple[int, int]) -> dict:
    """A ``*_kwargs`` mapping: known keys, integers within bounds, the width a multiple of the heads."""
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a mapping, got {_short(value)}")
    for key, item in value.items():
        if key not in bounds:
            raise ValueError(f"{name} takes {', '.join(bounds)}, got {_short(key)}")
        _check_int(f"{name}.{key}", item, *bounds[key])
    w, h = value.get(width, defaults[0]), value.get(heads, defaults[1])
    if w % h:
        raise ValueError(f"{name}.{width} must be a multiple of {heads} ({h}), got {w}")
    return dict(value)
