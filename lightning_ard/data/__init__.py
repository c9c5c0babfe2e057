"""DataModules of the experiments: Fashion-MNIST (IDX files) and PTB-format word-level language modelling."""

from lightning_ard.data.bptt import BPTTWindows, batchify
from lightning_ard.data.corpus import Vocabulary, embedded_corpus
from lightning_ard.data.fashion_mnist import FashionMNISTDataModule
from lightning_ard.data.idx import IDXFormatError, read_idx
from lightning_ard.data.ptb import PTBDataModule

__all__ = [
    "BPTTWindows",
    "FashionMNISTDataModule",
    "IDXFormatError",
    "PTBDataModule",
    "Vocabulary",
    "batchify",
    "embedded_corpus",
    "read_idx",
]
