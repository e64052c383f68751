"""LoVLANet: text tower + Neighborhood Key–Key Encoder + SFF/CMFA decoder, and its factory."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoints import CheckpointError, PathLike, atomic_save, check_finite, safe_load
from .config import LoVLANetConfig
from .decoder import CrossModalAlignment, SpatialFeatureFusion
from .encoder import FeaturePyramid, NeighborhoodKKEncoder
from .losses import LoVLANetLoss, LossOutput
from .text_encoder import TextEncoder

CHECKPOINT_FORMAT = "lovlanet-checkpoint-v1"


class LoVLANet(nn.Module):
    """The segmentation model of the paper (Figure 1).

    Build it with :func:`build_model`. ``forward(images (B, 3, H, W)) -> logits (B, K, H, W)``, with
    H and W multiples of the patch size (32) and images normalized with ``config.mean/std``.
    """

    def __init__(self, config: LoVLANetConfig, *, text_checkpoint: Optional[PathLike] = None,
                 visual_checkpoint: Optional[PathLike] = None):
        super().__init__()
        self.config = config
        components = config.components
        self.text_encoder = TextEncoder(config.text_model, text_checkpoint, config.text_activation, config.text_kwargs)
        self.encoder = NeighborhoodKKEncoder(
            config.visual_model, components=components, img_size=config.img_size, sigma=config.sigma,
            learnable_sigma=config.learnable_sigma, class_token=config.class_token,
            feature_blocks=config.feature_blocks, last_block_residual=config.last_block_residual,
            attn_backend=config.attn_backend, checkpoint=visual_checkpoint, timm_kwargs=config.visual_kwargs)
        self.pyramid = FeaturePyramid(self.encoder.embed_dim, self.encoder.patch_size)
        self.fusion = SpatialFeatureFusion(self.encoder.embed_dim, config.decoder_dim)
        self.alignment = CrossModalAlignment(config.decoder_dim, self.text_encoder.embed_dim)
        self.criterion = LoVLANetLoss(config.ignore_index, config.align_weight)
        self.register_buffer("_class_embeddings", torch.empty(0), persistent=False)
        self.set_text_trainable(not config.freeze_text)

    # ----------------------------------------------------------------------------------- text side
    def set_text_trainable(self, trainable: bool) -> None:
        """Freeze (class embeddings cached) or unfreeze (recomputed every forward) the text tower."""
        self.config.freeze_text = not trainable
        self.text_encoder.requires_grad_(trainable)
        self.refresh_class_embeddings()

    @torch.no_grad()
    def refresh_class_embeddings(self) -> None:
        """Recompute the cached class embeddings (after loading text weights or changing class names)."""
        if self.config.freeze_text:
            was_training = self.text_encoder.training
            self.text_encoder.eval()
            self._class_embeddings = self.text_encoder(self.config.prompts()).detach()
            self.text_encoder.train(was_training)
        else:
            self._class_embeddings = torch.empty(0, device=self._class_embeddings.device)

    def class_embeddings(self) -> Tensor:
        """``(K, E)`` unit-norm text embeddings of the class prompts."""
        if self.config.freeze_text:
            return self._class_embeddings
        return self.text_encoder(self.config.prompts())

    # --------------------------------------------------------------------------------- image side
    def check_images(self, images: Tensor) -> None:
        patch = self.encoder.patch_size
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be (B, 3, H, W) RGB tensors, got {shape}")
        if images.shape[-2] % patch or images.shape[-1] % patch or images.shape[-1] == 0 or images.shape[-2] == 0:
            raise ValueError(f"image height and width must be positive multiples of the patch size {patch}, "
                             f"got {images.shape[-2]}×{images.shape[-1]} (pad or resize; see lovlanet.data)")
        if images.shape[0] == 0:
            raise ValueError("images must hold at least one image, got a batch of 0")
        if not images.is_floating_point():
            raise ValueError(f"images must be a floating-point tensor (normalized RGB), got {images.dtype}")
        weights = self.encoder.vit.patch_embed.proj.weight.dtype
        if images.dtype != weights and not torch.is_autocast_enabled(images.device.type):
            raise ValueError(f"images are {images.dtype} but the model's weights are {weights}: convert them "
                             f"(images.to({weights})) or run under torch.autocast")

    def forward_train(self, images: Tensor, embeddings: bool = True) -> dict[str, Tensor]:
        """Everything the loss needs: ``logits (B, K, H, W)``, ``embeddings (B, E, H/4, W/4)``, ``text (K, E)``, ``tau``.

        ``embeddings=False`` leaves the embeddings out (None): inference needs only the logits."""
        self.check_images(images)
        text = self.class_embeddings()
        # pyramid + fusion, with each level's last deconvolution folded into its lateral conv (same maps)
        p1 = self.fusion.forward_pyramid(self.pyramid.levels, self.encoder(images))
        logits, embedded = self.alignment(p1, text, embeddings=embeddings)
        logits = F.interpolate(logits.contiguous(), size=images.shape[-2:], mode="bilinear", align_corners=False)
        return {"logits": logits, "embeddings": embedded, "text": text, "tau": self.alignment.tau}

    def forward(self, images: Tensor, train_outputs: bool = False):
        """Logits ``(B, K, H, W)``; with ``train_outputs=True`` the dict of :meth:`forward_train` (for DDP)."""
        outputs = self.forward_train(images, embeddings=train_outputs)
        return outputs if train_outputs else outputs["logits"]

    def loss(self, images: Tensor, target: Tensor) -> tuple[LossOutput, Tensor]:
        """``(LossOutput(total, seg, align), logits)`` for a batch and its ``(B, H, W)`` labels."""
        outputs = self.forward_train(images)
        return self.criterion(outputs, target), outputs["logits"]

    # -------------------------------------------------------------------------------- persistence
    def save(self, path: PathLike, **extra) -> Path:
        """Write weights + config (+ ``extra`` such as optimizer state) atomically."""
        return atomic_save({"format": CHECKPOINT_FORMAT, "config": self.config.to_dict(),
                            "model": self.state_dict(), **extra}, path)

    def summary(self) -> dict[str, int]:
        """Parameter counts per part."""
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        parts = {"text_encoder": count(self.text_encoder), "visual_encoder": count(self.encoder),
                 "decoder": count(self.pyramid) + count(self.fusion) + count(self.alignment)}
        parts["total"] = sum(parts.values())
        return parts


def build_model(variant: str = "full", class_names: Optional[Sequence[str]] = None, img_size: int = 1024, *,
                text_checkpoint: Optional[PathLike] = None, visual_checkpoint: Optional[PathLike] = None,
                sigma: float = 2.0, config: Optional[LoVLANetConfig] = None, **options) -> LoVLANet:
    """Build a LoVLANet variant.

    Args:
        variant: ``baseline``, ``kk``, ``gauss``, ``reduce_mlp``, ``kk+gauss``, ``kk+reduce_mlp``,
            ``gauss+reduce_mlp`` or ``full`` (Tables 3/5 of the paper).
        class_names: class names in logit order (default: LoveDA's six foreground classes).
        img_size: input size the positional embedding is stored at (1024 in the paper).
        text_checkpoint: a local open_clip state dict for the text tower (RemoteCLIP-ViT-B-32.pt).
        visual_checkpoint: timm or open_clip weights for the ViT (resampled to ``img_size``).
        sigma: σ of the Gaussian prior, in tokens.
        config: a full :class:`LoVLANetConfig` instead of the arguments above.
        options: other :class:`LoVLANetConfig` fields (``learnable_sigma``, ``freeze_text``, ...).
    Returns:
        the model, in training mode, on the CPU.
    """
    if config is None:
        fields = dict(variant=variant, img_size=img_size, sigma=sigma, **options)
        if class_names is not None:
            fields["class_names"] = tuple(class_names)
        config = LoVLANetConfig(**fields)
    elif options or class_names is not None:
        raise ValueError("pass either config or individual options, not both")
    return LoVLANet(config, text_checkpoint=text_checkpoint, visual_checkpoint=visual_checkpoint)


def load_model(path: PathLike, *, map_location="cpu", expect: Optional[LoVLANetConfig] = None) -> LoVLANet:
    """Rebuild a model from :meth:`LoVLANet.save`'s file (read with ``weights_only=True``).

    ``expect``: raise :class:`CheckpointError` if the checkpoint's variant or class list differ from it.
    """
    checkpoint = read_checkpoint(path)
    try:  # the config is checked (architectures, bounds) before anything is built from it
        config = LoVLANetConfig.from_dict(checkpoint["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} has an invalid model config: {exc}") from exc
    if expect is not None:
        for name in ("variant", "class_names"):
            if getattr(expect, name) != getattr(config, name):
                raise CheckpointError(f"{path} holds a model with {name}={getattr(config, name)!r}, "
                                      f"expected {getattr(expect, name)!r}")
    import warnings

    with warnings.catch_warnings():  # the weights come from the checkpoint: no "random text tower" warning
        warnings.simplefilter("ignore")
        model = LoVLANet(config)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not fit its own config: {exc}") from exc
    model.refresh_class_embeddings()
    return model.to(map_location)


def read_checkpoint(path: PathLike) -> dict:
    """A LoVLANet checkpoint dict, validated; raises :class:`CheckpointError` naming the file."""
    checkpoint = safe_load(path)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a LoVLANet checkpoint (no '{CHECKPOINT_FORMAT}' format tag)")
    if not isinstance(checkpoint.get("config"), dict):
        raise CheckpointError(f"{path} is damaged: it has no model config")
    model = checkpoint.get("model")
    if not isinstance(model, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()):
        raise CheckpointError(f"{path} is damaged: it has no model weights (a mapping of names to tensors)")
    check_finite(model, path)
    return checkpoint
