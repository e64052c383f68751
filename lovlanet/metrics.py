"""Segmentation metrics from a streaming confusion matrix, as the paper defines them (section 3.2).

Rows are ground truth, columns predictions. Per class c: ``IoU = tp / (tp + fp + fn)``,
``F1 = 2tp / (2tp + fp + fn)``; mIoU and mF1 are their means over the evaluated classes;
``OA = Σ tp / total``; Cohen's ``κ = (p_o − p_e) / (1 − p_e)`` with ``p_e = Σ_c row_c·col_c / total²``.
Pixels labelled ``ignore_index`` are never counted.

``exclude`` (e.g. LoveDA's background when it is kept as a class) evaluates the foreground only:
pixels whose *ground truth* is an excluded class are dropped (their rows), and means run over the
other classes. A foreground pixel predicted as background still counts as that class's miss.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


class ConfusionMatrix:
    """Accumulates a ``(K, K)`` int64 confusion matrix on ``device`` (default: that of the first update).

    ``update(pred, target)`` takes label tensors of the same shape (any shape); ``all_reduce()`` sums
    across ``torch.distributed`` ranks; ``compute()`` returns the metrics dict.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, class_names: Sequence[str] | None = None,
                 exclude: Sequence[int] = (), device=None):
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = tuple(class_names) if class_names is not None else tuple(str(i) for i in range(num_classes))
        self.exclude = tuple(sorted(set(exclude)))
        # Allocated up front when the device is known (every rank then has one to all-reduce).
        self.matrix: Tensor | None = None if device is None else \
            torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        if self.matrix is None:
            self.matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=target.device)
        target = target.reshape(-1).to(self.matrix.device)
        pred = pred.reshape(-1).to(self.matrix.device)
        labelled = target != self.ignore_index
        stray = labelled & ((target < 0) | (target >= self.num_classes))
        if stray.any():  # a label outside the classes is a data error, not something to skip silently
            raise ValueError(f"target value {int(target[stray][0])} is neither a class in [0, {self.num_classes}) "
                             f"nor the ignore index {self.ignore_index}")
        valid = labelled
        if ((pred[valid] < 0) | (pred[valid] >= self.num_classes)).any():
            raise ValueError(f"predictions must lie in [0, {self.num_classes})")
        index = target[valid].long() * self.num_classes + pred[valid].long()
        self.matrix += torch.bincount(index, minlength=self.num_classes ** 2).view(self.num_classes, self.num_classes)

    def all_reduce(self) -> None:
        import torch.distributed as dist

        if self.matrix is None:
            raise RuntimeError("all_reduce before any update")
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix)

    def reset(self) -> None:
        self.matrix = None

    def compute(self) -> dict:
        """``{"IoU": {class: %}, "F1": {...}, "mIoU", "mF1", "OA", "Kappa", "pixels"}``, in percent."""
        matrix = self.matrix if self.matrix is not None else torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        return metrics_from_confusion(matrix.double().cpu(), self.class_names, self.exclude)


def metrics_from_confusion(matrix: Tensor, class_names: Sequence[str], exclude: Sequence[int] = ()) -> dict:
    keep = [c for c in range(matrix.shape[0]) if c not in set(exclude)]
    m = matrix.clone()
    m[list(exclude)] = 0  # drop pixels whose ground truth is excluded
    tp = m.diag()
    rows, cols = m.sum(1), m.sum(0)
    total = m.sum()
    iou = tp / (rows + cols - tp)
    f1 = 2 * tp / (rows + cols)
    oa = tp[keep].sum() / total
    pe = (rows * cols).sum() / total ** 2
    kappa = (oa - pe) / (1 - pe)
    pct = lambda x: round(float(x) * 100, 4) if torch.isfinite(x) else float("nan")  # noqa: E731
    return {
        "IoU": {class_names[c]: pct(iou[c]) for c in keep},
        "F1": {class_names[c]: pct(f1[c]) for c in keep},
        # a class absent from both ground truth and prediction has no IoU: it is left out of the mean
        "mIoU": pct(iou[keep][torch.isfinite(iou[keep])].mean()),
        "mF1": pct(f1[keep][torch.isfinite(f1[keep])].mean()),
        "OA": pct(oa),
        "Kappa": pct(kappa),
        "pixels": int(total),
    }


def metrics_table(metrics: dict, title: str = "") -> str:
    """The paper's Table 1/2 layout: per-class IoU, then mIoU, mF1, OA, κ (%), as Markdown."""
    names = list(metrics["IoU"])
    head = "| " + " | ".join([*names, "mIoU", "mF1", "OA", "Kappa"]) + " |"
    sep = "|" + "---:|" * (len(names) + 4)
    vals = [metrics["IoU"][n] for n in names] + [metrics[k] for k in ("mIoU", "mF1", "OA", "Kappa")]
    row = "| " + " | ".join("—" if v is None or v != v else f"{v:.2f}" for v in vals) + " |"  # — : no pixels
    return "\n".join(([f"**{title}**", ""] if title else []) + [head, sep, row])
