"""Fashion-MNIST as a LightningDataModule, read from the IDX gzip files of Debian's ``dataset-fashion-mnist``.

The four files are read once into memory (60k + 10k images of 28x28 bytes), normalized with the training set's
mean and standard deviation, and the official training set is split into train and validation parts with a
seeded permutation, so every run of a sweep sees the same split.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_ard.app.data.idx import IMAGES_MAGIC, LABELS_MAGIC, check_idx, read_idx

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
"""Where ``apt-get install dataset-fashion-mnist`` puts the files."""

FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
"""Split -> (images file, labels file), without the optional ``.gz``."""

SIZES: dict[str, int] = {"train": 60_000, "test": 10_000}
MEAN, STD = 0.2860, 0.3530
"""Pixel mean and standard deviation of the training images (scaled to [0, 1])."""
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def find_file(root: Path, stem: str) -> Path:
    """``root/stem.gz`` or ``root/stem``; a clear error with the install command and the override otherwise."""
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"Fashion-MNIST file {root / stem}.gz not found (nor the uncompressed {root / stem}). "
        f"Install the data with `sudo apt-get install dataset-fashion-mnist` (it puts the files in {DEFAULT_ROOT}), "
        f"or point to a folder holding the four IDX files with the override `data.root=/path/to/fashion-mnist`."
    )


def load_split(root: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``split`` ("train" or "test") as uint8 images [N, 28, 28] and int64 labels [N], validated."""
    if split not in FILES:
        raise ValueError(f"split must be one of {list(FILES)}, got {split!r}")
    root = Path(root)
    n = SIZES[split]
    images_stem, labels_stem = FILES[split]
    images = read_idx(find_file(root, images_stem), IMAGES_MAGIC, (n, 28, 28))
    labels_path = find_file(root, labels_stem)
    labels = read_idx(labels_path, LABELS_MAGIC, (n,)).long()
    if labels.min() < 0 or labels.max() >= len(CLASSES):
        raise ValueError(
            f"{labels_path}: labels must lie in [0, {len(CLASSES) - 1}], got [{labels.min()}, {labels.max()}]"
        )
    return images, labels


def to_dataset(images: torch.Tensor, labels: torch.Tensor) -> TensorDataset:
    """Float images [N, 1, 28, 28] normalized with the training statistics, with their labels."""
    x = (images.float().div_(255.0).sub_(MEAN).div_(STD)).unsqueeze(1)
    return TensorDataset(x, labels)


class FashionMNISTDataModule(L.LightningDataModule):
    """Fashion-MNIST train/val/test loaders of normalized [B, 1, 28, 28] images and int64 labels.

    Args:
        root: folder with the four IDX files (``.gz`` or not).
        batch_size: training batch size.
        eval_batch_size: validation and test batch size (``None``: same as ``batch_size``).
        val_size: number of training images held out for validation (0 < val_size < 60000).
        num_workers: DataLoader workers (the data is in memory; 0 is usually fastest).
        split_seed: seed of the train/val permutation (independent of the training seed, so all runs of a sweep
            share one split).
    """

    def __init__(
        self,
        root: str | Path = DEFAULT_ROOT,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        val_size: int = 5_000,
        num_workers: int = 0,
        split_seed: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"data.batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(val_size, bool) or not isinstance(val_size, int) or not 0 < val_size < SIZES["train"]:
            raise ValueError(f"data.val_size must be an integer in (0, {SIZES['train']}), got {val_size!r}")
        self.save_hyperparameters()
        self.root = Path(root)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_size = val_size
        self.num_workers = num_workers
        self.split_seed = split_seed
        self.num_classes = len(CLASSES)
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None
        self.test_set: TensorDataset | None = None

    def prepare_data(self) -> None:
        """Nothing to download: check every split's files now (present, IDX header, shape and size), so a missing
        or truncated file fails before training instead of after it."""
        for split, (images_stem, labels_stem) in FILES.items():
            check_idx(find_file(self.root, images_stem), IMAGES_MAGIC, (SIZES[split], 28, 28))
            check_idx(find_file(self.root, labels_stem), LABELS_MAGIC, (SIZES[split],))

    def setup(self, stage: str | None = None) -> None:
        """Load (once) the splits the stage needs."""
        if stage in (None, "fit", "validate") and self.train_set is None:
            images, labels = load_split(self.root, "train")
            perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.split_seed))
            val_idx, train_idx = perm[: self.val_size], perm[self.val_size :]
            self.train_set = to_dataset(images[train_idx], labels[train_idx])
            self.val_set = to_dataset(images[val_idx], labels[val_idx])
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = to_dataset(*load_split(self.root, "test"))

    def _loader(self, dataset: TensorDataset | None, batch_size: int, shuffle: bool, stage: str) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"call setup({stage!r}) before asking for the {stage} loader")
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=shuffle,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, True, "fit")

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, False, "validate")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, False, "test")
