"""LoVLANet — remote-sensing segmentation with neighborhood key–key attention (Remote Sens. 2026, 18, 1708).

Public API:

* :func:`build_model` — any of the eight ablation variants (:data:`VARIANTS`) → :class:`LoVLANet`.
* :func:`load_model` — rebuild a model from a checkpoint written by :meth:`LoVLANet.save`.
* :class:`LoVLANetConfig` — the configuration (JSON round-trip, stored in checkpoints).
* :class:`LoVLANetLoss` — pixel cross-entropy + λ·vision–language alignment.
"""
import importlib.util as _util

_MISSING = [name for name, module in (("timm", "timm"), ("open-clip-torch", "open_clip"), ("pillow", "PIL"),
                                      ("tifffile", "tifffile"), ("pyyaml", "yaml"), ("tqdm", "tqdm"))
            if _util.find_spec(module) is None]
if _MISSING:
    raise ImportError(f"lovlanet needs {', '.join(_MISSING)}: install the extra with pip install 'kkattn[lovlanet]' "
                      "(or, from a clone, pip install --no-build-isolation -e '.[lovlanet]')")

from .checkpoints import CheckpointError  # noqa: E402  (after the dependency check)
from .config import COMPONENTS, LOVEDA_CLASSES, VARIANTS, LoVLANetConfig, parse_variant  # noqa: E402
from .losses import LossOutput, LoVLANetLoss  # noqa: E402
from .model import LoVLANet, build_model, load_model  # noqa: E402

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
