"""DataModules of the experiments: Fashion-MNIST (IDX files) and PTB-format word-level language modelling."""

from lightning_ard.app.data.bptt import BPTTWindows, batchify
from lightning_ard.app.data.corpus import Vocabulary, embedded_corpus
from lightning_ard.app.data.fashion_mnist import FashionMNISTDataModule
from lightning_ard.app.data.idx import IDXFormatError, read_idx
from lightning_ard.app.data.ptb import PTBDataModule

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
