"""LoVLANet — remote-sensing segmentation with neighborhood key–key attention (Remote Sens. 2026, 18, 1708).

Public API:

* :func:`build_model` — any of the eight ablation variants (:data:`VARIANTS`) → :class:`LoVLANet`.
* :func:`load_model` — rebuild a model from a checkpoint written by :meth:`LoVLANet.save`.
* :class:`LoVLANetConfig` — the configuration (JSON round-trip, stored in checkpoints).
* :class:`LoVLANetLoss` — pixel cross-entropy + λ·vision–language alignment.

The names load on first use (PEP 562): the console scripts (``lovlanet-train`` ...) parse their
arguments before torch and timm are imported, so ``--help`` and usage errors return at once.
"""
import importlib.util as _util

_MISSING = [name for name, module in (("timm", "timm"), ("open-clip-torch", "open_clip"), ("pillow", "PIL"),
                                      ("tifffile", "tifffile"), ("pyyaml", "yaml"), ("tqdm", "tqdm"))
            if _util.find_spec(module) is None]
if _MISSING:
    raise ImportError(f"lovlanet needs {', '.join(_MISSING)}: install the extra with pip install 'kkattn[lovlanet]' "
                      "(or, from a clone, pip install --no-build-isolation -e '.[lovlanet]')")

from kkattn._lazy import lazy_attributes  # noqa: E402  (torch-free: importing lovlanet stays cheap)

__getattr__, __dir__ = lazy_attributes(__name__, {
    name: (module, name) for module, names in {
        ".checkpoints": ("CheckpointError",),
        ".config": ("COMPONENTS", "LOVEDA_CLASSES", "VARIANTS", "LoVLANetConfig", "parse_variant"),
        ".losses": ("LossOutput", "LoVLANetLoss"),
        ".model": ("LoVLANet", "build_model", "load_model"),
    }.items() for name in names})

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
