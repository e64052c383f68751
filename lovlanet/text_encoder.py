"""RemoteCLIP's text tower through open_clip: prompts → L2-normalized class embeddings."""
from __future__ import annotations

import warnings
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from .checkpoints import CheckpointError, PathLike, load_state_dict


def _create_clip(model_name: str, quick_gelu: bool, text_overrides: dict) -> nn.Module:
    import logging

    import open_clip

    # open_clip logs its own "no pretrained weights" warning; ours (below) says what to do about it.
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        # The visual tower is deleted right after: build a one-layer stand-in instead of 88 M parameters.
        config = open_clip.get_model_config(model_name)
        tiny_visual = dict(config["vision_cfg"], layers=1, width=64, head_width=64, image_size=32, patch_size=32)
        return open_clip.create_model(model_name, pretrained=None, vision_cfg=tiny_visual, force_quick_gelu=quick_gelu,
                                      text_cfg=dict(config["text_cfg"], **text_overrides),
                                      device=torch.get_default_device())  # "meta" under summary's context
    finally:
        logger.setLevel(level)


class TextEncoder(nn.Module):
    """The text half of an open_clip CLIP (``ViT-B-32`` for RemoteCLIP), tokenizer included.

    Args:
        model_name: open_clip model name (a local definition: nothing is downloaded).
        activation: ``"quickgelu"`` or ``"gelu"``. RemoteCLIP was fine-tuned from OpenAI CLIP, which uses
            QuickGELU; RemoteCLIP's own loading instructions build plain GELU. Both load the same weights;
            the text embeddings differ by about 2e-3.
        text_overrides: ``width``/``layers``/``heads`` of a smaller tower (no pretrained weights fit it).
        checkpoint: a local open_clip state dict (e.g. ``RemoteCLIP-ViT-B-32.pt``); ``visual.*`` keys are
            ignored, any other missing or unexpected key is an error naming it. ``None``: random weights
            (a warning says so).

    Shapes: ``forward(prompts: list[str]) -> (len(prompts), embed_dim)``, rows of unit norm.
    """

    def __init__(self, model_name: str = "ViT-B-32", checkpoint: Optional[PathLike] = None,
                 activation: str = "quickgelu", text_overrides: Optional[dict] = None):
        super().__init__()
        import open_clip

        if activation not in ("quickgelu", "gelu"):
            raise ValueError(f"activation must be 'quickgelu' or 'gelu', got {activation!r}")
        clip = _create_clip(model_name, activation == "quickgelu", text_overrides or {})
        del clip.visual  # encode_text never touches it; 88 M parameters we do not need
        self.clip = clip
        self.model_name = model_name
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.embed_dim = int(clip.text_projection.shape[-1]) if isinstance(clip.text_projection, Tensor) \
            else int(clip.text_projection.out_features)
        if checkpoint is None:
            warnings.warn(f"no text checkpoint given: the {model_name} text tower has random weights. Pass "
                          "text_checkpoint='RemoteCLIP-ViT-B-32.pt' (an open_clip state dict) for the paper's model.",
                          stacklevel=4)  # the caller of build_model
        else:
            self.load_checkpoint(checkpoint)

    @torch.no_grad()
    def load_checkpoint(self, path: PathLike) -> None:
        """Load the text keys of an open_clip state dict; raise :class:`CheckpointError` naming bad keys."""
        state = {k: v for k, v in load_state_dict(path).items() if not k.startswith("visual.")}
        own = self.clip.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing text keys: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
            if unexpected:
                parts.append(f"unexpected keys: {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
            raise CheckpointError(f"{path} is not a {self.model_name} open_clip checkpoint ({'; '.join(parts)})")
        bad = [k for k in own if own[k].shape != state[k].shape]
        if bad:
            raise CheckpointError(f"{path}: shape mismatch for {bad[0]}: checkpoint {tuple(state[bad[0]].shape)}, "
                                  f"model {tuple(own[bad[0]].shape)}")
        self.clip.load_state_dict(state)

    def tokenize(self, prompts: Sequence[str]) -> Tensor:
        return self.tokenizer(list(prompts))

    def forward(self, prompts: Sequence[str]) -> Tensor:
        tokens = self.tokenize(prompts).to(self.clip.token_embedding.weight.device)
        return self.clip.encode_text(tokens, normalize=True)
