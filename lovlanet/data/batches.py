"""Training batches: items stacked into tensors, and a dataset seen through the training augmentation."""
from __future__ import annotations

import torch


def collate(items: list[dict]) -> dict:
    return {"image": torch.stack([i["image"] for i in items]), "mask": torch.stack([i["mask"] for i in items]),
            "name": [i["name"] for i in items]}


class Augmented(torch.utils.data.Dataset):
    """``dataset`` with ``augment`` applied to each item (the training transforms)."""

    def __init__(self, dataset, augment):
        self.dataset, self.augment = dataset, augment

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return self.augment(self.dataset[index])
