"""LoVLANet — remote-sensing segmentation with neighborhood key–key attention (Remote Sens. 2026, 18, 1708).

Public API:

* :func:`build_model` — any of the eight ablation variants (:data:`VARIANTS`) → :class:`LoVLANet`.
* :func:`load_model` — rebuild a model from a checkpoint written by :meth:`LoVLANet.save`.
* :class:`LoVLANetConfig` — the configuration (JSON round-trip, stored in checkpoints).
* :class:`LoVLANetLoss` — pixel cross-entropy + λ·vision–language alignment.
"""
from .checkpoints import CheckpointError
from .config import COMPONENTS, LOVEDA_CLASSES, VARIANTS, LoVLANetConfig, parse_variant
from .losses import LossOutput, LoVLANetLoss
from .model import LoVLANet, build_model, load_model

__all__ = [
    "COMPONENTS",
    "CheckpointError",
    "LOVEDA_CLASSES",
    "LoVLANet",
    "LoVLANetConfig",
    "LoVLANetLoss",
    "LossOutput",
    "VARIANTS",
    "build_model",
    "load_model",
    "parse_variant",
]
