"""DataModules of the experiments: Fashion-MNIST (IDX files), PTB-format word-level language modelling, and the
King James Bible built into a PTB-format corpus."""

from lightning_ard.app.data.bptt import BPTTWindows, batchify
from lightning_ard.app.data.corpus import Vocabulary, embedded_corpus
from lightning_ard.app.data.fashion_mnist import FashionMNISTDataModule
from lightning_ard.app.data.idx import IDXFormatError, read_idx
from lightning_ard.app.data.kjv import KJVDataModule
from lightning_ard.app.data.ptb import PTBDataModule

__all__ = [
    "BPTTWindows",
    "FashionMNISTDataModule",
    "IDXFormatError",
    "KJVDataModule",
    "PTBDataModule",
    "Vocabulary",
    "batchify",
    "embedded_corpus",
    "read_idx",
]
