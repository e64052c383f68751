"""Neighborhood Key–Key Encoder: timm's ViT with the paper's three switches, and its feature pyramid.

The encoder is timm's ``VisionTransformer`` (patch embedding, positional embedding, norms, blocks);
each block is re-wrapped in :class:`EncoderBlock`, which keeps timm's submodule names (so timm and
open_clip-converted checkpoints load unchanged, before conversion) and adds the token grid to the
attention call, which timm's ``Block.forward`` cannot pass.

* ``kk``: the block's attention becomes :class:`kkattn.nn.NeighborhoodKKAttention`; k and v come from
  the fused ``qkv`` weights, the q rows are dropped.
* ``gauss``: the prior G is added to the logits. With ``kk`` the kkattn operator generates it on the fly;
  without ``kk`` (query–key + G, an ablation only) it goes to timm's attention as an additive mask,
  which SDPA needs materialized: one ``(N, N)`` (or ``(H, N, N)`` with learnable σ) tensor per block.
* ``reduce_mlp``: the final block has no FFN (norm2, mlp, layer scale and drop path are removed, not
  bypassed: ``block.mlp = nn.Identity()`` would still add ``norm2(x)``) and, by default, no
  attention residual either (NACLIP's choice; ``last_block_residual=True`` keeps it).

The CLS token stays as a prefix token outside the prior (``num_prefix_tokens=1``) when
``class_token=True``: the CLIP weights were trained with it and the baseline must equal timm's ViT.
It never reaches the decoder; there is no classifier head.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from kkattn import gaussian_prior
from kkattn.nn import NeighborhoodKKAttention

from .checkpoints import CheckpointError, PathLike, load_state_dict


class GaussianPrior(nn.Module):
    """The materialized prior as an additive attention mask, for the query–key ``gauss`` ablation.

    Shapes: ``forward(grid, dtype, device) -> (N, N)`` (fixed σ) or ``(1, H, N, N)`` (learnable σ).
    """

    def __init__(self, sigma: float, num_heads: int, num_prefix_tokens: int, learnable: bool = False):
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens
        if learnable:
            self.log_sigma = nn.Parameter(torch.full((num_heads,), math.log(sigma)))
        else:
            self.register_parameter("log_sigma", None)
        self.sigma = float(sigma)

    def forward(self, grid: tuple[int, int], dtype: torch.dtype, device: torch.device) -> Tensor:
        if self.log_sigma is None:
            return gaussian_prior(grid, self.sigma, self.num_prefix_tokens, dtype=dtype, device=device)
        return gaussian_prior(grid, self.log_sigma.exp(), self.num_prefix_tokens, dtype=dtype, device=device)[None]

    def extra_repr(self) -> str:
        return f"sigma={'learnable' if self.log_sigma is not None else self.sigma}"


# How a block's attention takes the token grid, one adapter per attention kind, all with the signature
# (block, x, grid) -> attention output; the block picks one when it is built, so its forward has no branch.
def _attend_key_key(block: "EncoderBlock", x: Tensor, grid: tuple[int, int]) -> Tensor:
    return block.attn(x, grid=grid)  # kkattn generates the prior (if any) from the grid


def _attend_with_prior_mask(block: "EncoderBlock", x: Tensor, grid: tuple[int, int]) -> Tensor:
    return block.attn(x, attn_mask=block.prior(grid, x.dtype, x.device))  # query–key + materialized G


def _attend_plain(block: "EncoderBlock", x: Tensor, grid: tuple[int, int]) -> Tensor:
    return block.attn(x)  # timm's attention, untouched (the baseline)


class EncoderBlock(nn.Module):
    """A pre-norm ViT block built from a timm ``Block``'s parts, with the grid passed to attention.

    Args:
        block: the timm block whose modules are taken over (``norm1, attn, ls1, drop_path1, norm2, mlp, ls2,
            drop_path2``).
        attn: a replacement attention module (key–key), or ``None`` to keep timm's.
        prior: a :class:`GaussianPrior` whose mask goes to timm's attention (query–key ``gauss``).
        mlp: keep the FFN; ``False`` removes it (``reduce_mlp`` on the final block).
        residual: with ``mlp=False``, keep the attention residual.
    """

    def __init__(self, block: nn.Module, attn: Optional[nn.Module] = None, prior: Optional[GaussianPrior] = None,
                 mlp: bool = True, residual: bool = True):
        super().__init__()
        self.norm1 = block.norm1
        self.attn = attn if attn is not None else block.attn
        self.ls1 = block.ls1
        self.drop_path1 = block.drop_path1
        self.prior = prior
        if isinstance(self.attn, NeighborhoodKKAttention):
            self._attend = _attend_key_key
        else:
            self._attend = _attend_with_prior_mask if prior is not None else _attend_plain
        self.has_mlp = mlp
        self.residual = residual or mlp
        if mlp:
            self.norm2, self.mlp, self.ls2, self.drop_path2 = block.norm2, block.mlp, block.ls2, block.drop_path2

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        h = self.drop_path1(self.ls1(self._attend(self, self.norm1(x), grid)))
        x = x + h if self.residual else h
        if self.has_mlp:
            x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x

    def extra_repr(self) -> str:
        return f"mlp={self.has_mlp}, residual={self.residual}"


def kk_attention_from_timm(attn: nn.Module, sigma: Optional[float], num_prefix_tokens: int, *,
                           learnable_sigma: bool = False, backend: str = "auto") -> NeighborhoodKKAttention:
    """A key–key attention with timm ``Attention``'s k, v and output projection weights (q dropped)."""
    for name in ("q_norm", "k_norm", "norm"):
        if not isinstance(getattr(attn, name, nn.Identity()), nn.Identity):
            raise ValueError(f"key–key conversion does not support timm attention with {name} (got {getattr(attn, name)})")
    dim = attn.qkv.in_features
    kk = NeighborhoodKKAttention(dim, attn.num_heads, sigma, qkv_bias=attn.qkv.bias is not None,
                                 proj_bias=attn.proj.bias is not None, num_prefix_tokens=num_prefix_tokens,
                                 learnable_sigma=learnable_sigma, scale=attn.scale, backend=backend)
    kk = kk.to(attn.qkv.weight.device, attn.qkv.weight.dtype)
    kk.load_qkv_(attn.qkv.weight, attn.qkv.bias)
    kk.proj.load_state_dict(attn.proj.state_dict())
    return kk


class NeighborhoodKKEncoder(nn.Module):
    """timm ViT → hidden states of four blocks, as ``(B, C, h, w)`` maps.

    Args:
        model_name: a timm ViT name (``vit_base_patch32_clip_quickgelu_224`` for RemoteCLIP/CLIP weights).
        components: the variant's components (see :mod:`lovlanet.config`).
        img_size: the size the positional embedding is stored at (inputs of other sizes resample it).
        checkpoint: timm-format weights, or an open_clip/OpenAI CLIP state dict (``visual.*`` keys),
            converted by timm's ``checkpoint_filter_fn`` before the key–key conversion.
        timm_kwargs: extra ``timm.create_model`` arguments (``depth``, ``embed_dim``... for small models).

    Shapes: ``forward(images (B, 3, H, W)) -> list of 4 × (B, C, H/p, W/p)``, H and W multiples of the patch p.
    """

    def __init__(self, model_name: str = "vit_base_patch32_clip_quickgelu_224", *, components=frozenset(),
                 img_size: int = 1024, sigma: float = 2.0, learnable_sigma: bool = False, class_token: bool = True,
                 feature_blocks=(3, 6, 9, 12), last_block_residual: bool = False, attn_backend: str = "auto",
                 checkpoint: Optional[PathLike] = None, timm_kwargs: Optional[dict] = None):
        super().__init__()
        import timm

        kwargs = dict(num_classes=0, global_pool="", img_size=img_size, dynamic_img_size=True,
                      class_token=class_token)
        kwargs.update(timm_kwargs or {})
        vit = timm.create_model(model_name, pretrained=False, **kwargs)
        if checkpoint is not None:
            self._load_timm_checkpoint(vit, checkpoint)
        depth = len(vit.blocks)
        if feature_blocks[-1] != depth:
            # F4 is the final block's output, where reduce_mlp acts; later blocks would be dead weights.
            raise ValueError(f"feature_blocks {tuple(feature_blocks)} must end at the encoder's last block ({depth})")
        self.vit = vit
        self.patch_size = int(vit.patch_embed.patch_size[0])
        self.embed_dim = int(vit.embed_dim)
        self.num_prefix_tokens = int(vit.num_prefix_tokens)
        self.feature_indices = tuple(b - 1 for b in feature_blocks)
        self.components = frozenset(components)

        blocks = []
        for i, block in enumerate(vit.blocks):
            attn, prior = None, None
            if "kk" in components:
                attn = kk_attention_from_timm(block.attn, sigma if "gauss" in components else None,
                                              self.num_prefix_tokens, learnable_sigma=learnable_sigma and "gauss" in components,
                                              backend=attn_backend)
            elif "gauss" in components:
                prior = GaussianPrior(sigma, block.attn.num_heads, self.num_prefix_tokens, learnable_sigma)
            last = i == depth - 1
            reduce = last and "reduce_mlp" in components
            blocks.append(EncoderBlock(block, attn, prior, mlp=not reduce, residual=last_block_residual or not reduce))
        vit.blocks = nn.Sequential(*blocks)

    @staticmethod
    def _load_timm_checkpoint(vit: nn.Module, path: PathLike) -> None:
        from timm.models.vision_transformer import checkpoint_filter_fn

        state = load_state_dict(path)
        if any(k.startswith("visual.") for k in state):  # an open_clip CLIP checkpoint: keep its visual tower
            state = {k: v for k, v in state.items() if k.startswith("visual.")}
        try:
            state = checkpoint_filter_fn(state, vit)
        except Exception as exc:
            raise CheckpointError(f"{path}: cannot convert to the timm ViT: {type(exc).__name__}: {exc}") from exc
        # Classifier heads and the CLIP projection are not part of a segmentation encoder.
        state = {k: v for k, v in state.items() if not k.startswith(("head.", "fc_norm."))}
        if vit.cls_token is None:
            state.pop("cls_token", None)
            if "pos_embed" in state and state["pos_embed"].shape[1] == vit.pos_embed.shape[1] + 1:
                state["pos_embed"] = state["pos_embed"][:, 1:]
        own = vit.state_dict()
        wrong = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
        if wrong:
            raise CheckpointError(f"{path} does not fit the visual encoder: {wrong[0]} is {tuple(state[wrong[0]].shape)} "
                                  f"in the file, {tuple(own[wrong[0]].shape)} in the model (another width or depth?)")
        missing, unexpected = vit.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{path} does not fit the visual encoder (missing: {', '.join(missing[:6]) or '-'}; "
                                  f"unexpected: {', '.join(unexpected[:6]) or '-'})")

    def forward(self, images: Tensor) -> list[Tensor]:
        vit = self.vit
        x = vit.patch_embed(images)  # (B, h, w, C): dynamic_img_size keeps the grid
        batch, h, w, _ = x.shape
        x = vit._pos_embed(x)  # resamples the stored embedding to (h, w) and prepends the CLS token
        x = vit.norm_pre(vit.patch_drop(x))
        features = []
        for i, block in enumerate(vit.blocks):
            x = block(x, (h, w))
            if i in self.feature_indices:
                # F1..F3 are raw block outputs; F4 gets the ViT's final norm, as timm's forward_features does.
                y = vit.norm(x) if i == len(vit.blocks) - 1 else x
                # (B, C, h, w) as a view of the tokens: channels-last memory, no copy
                features.append(y[:, self.num_prefix_tokens:].reshape(batch, h, w, -1).permute(0, 3, 1, 2))
        return features


class FeaturePyramid(nn.Module):
    """Single-scale ViT maps → four maps at strides 4/8/16/32 (ViTDet's simple pyramid).

    Each level upsamples by 2× steps of ``ConvTranspose2d(k=2, s=2)`` (LayerNorm2d + GELU between
    steps), keeps the map (identity), or max-pools, depending on the patch size: a patch-32 ViT gets
    3/2/1/0 deconvolutions, a patch-16 ViT 2/1/0 and a pooling.

    Shapes: ``forward(4 × (B, C, H/p, W/p)) -> 4 × (B, C, H/s, W/s)`` for s = 4, 8, 16, 32.
    """

    STRIDES = (4, 8, 16, 32)

    def __init__(self, dim: int, patch_size: int):
        super().__init__()
        from timm.layers import LayerNorm2d

        levels = []
        for stride in self.STRIDES:
            if stride < patch_size:
                steps = int(math.log2(patch_size // stride))
                if 2 ** steps * stride != patch_size:
                    raise ValueError(f"patch size {patch_size} is not a power-of-two multiple of stride {stride}")
                layers: list[nn.Module] = []
                for s in range(steps):
                    layers.append(nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2))
                    if s < steps - 1:
                        layers += [LayerNorm2d(dim), nn.GELU()]
                levels.append(nn.Sequential(*layers))
            elif stride == patch_size:
                levels.append(nn.Identity())
            else:
                levels.append(nn.MaxPool2d(kernel_size=stride // patch_size, stride=stride // patch_size))
        self.levels = nn.ModuleList(levels)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        return [level(f) for level, f in zip(self.levels, features)]

