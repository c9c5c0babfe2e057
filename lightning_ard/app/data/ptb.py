"""A word-level language-model DataModule for PTB-format corpora (Zaremba et al. batching).

With ``root`` set it reads ``ptb.train.txt``, ``ptb.valid.txt`` and ``ptb.test.txt`` from that folder (the
layout of Mikolov's PTB release, also used by many other corpora). With ``root=None`` it uses the embedded corpus
of :func:`lightning_ard.app.data.corpus.embedded_corpus`, split train/valid/test, so the app runs without downloads.
The vocabulary comes from the training split only and is capped at ``max_vocab_size`` (rarer words become ``<unk>``).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from lightning_ard.app.data.bptt import BPTTWindows, batchify
from lightning_ard.app.data.corpus import Vocabulary, embedded_corpus, ptb_tokens, split_lines

SPLITS = ("train", "valid", "test")


def read_ptb_split(root: Path, split: str) -> list[str]:
    """Lines of ``root/ptb.<split>.txt``; a clear error with the fix when the file is missing."""
    path = root / f"ptb.{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(
            f"PTB-format file {path} not found. Put ptb.train.txt, ptb.valid.txt and ptb.test.txt in one folder "
            f"and pass it as `data.root=/path/to/ptb`, or use `data.root=null` for the embedded corpus built from "
            f"the Python standard library's pydoc_data text."
        )
    return path.read_text(encoding="utf-8").splitlines()


class PTBDataModule(L.LightningDataModule):
    """Token windows ``(inputs, targets)`` of shape ``[batch, <= bptt]`` (int64) for a word-level LM.

    Args:
        root: folder with ``ptb.{train,valid,test}.txt``; ``None`` for the embedded corpus.
        batch_size: number of parallel streams in training (Zaremba et al.: 20).
        eval_batch_size: streams for validation and test (``None``: same as ``batch_size``).
        bptt: truncated-BPTT window length, the number of unrolled steps (Zaremba et al.: 35).
        max_vocab_size: cap on the vocabulary, ``<unk>`` and ``<eos>`` included (``None``: every training word).
        split: train/valid/test fractions of the embedded corpus (ignored when ``root`` is set).
        num_workers: DataLoader workers (windows are slices of an in-memory tensor; 0 is best).
        train_tokens: train on the first this many tokens of the training split (``None``: all of it); the
            vocabulary still comes from the whole split. A contiguous slice is what lets a model overfit within a
            few epochs, the regime in which dropout's regularization shows.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        batch_size: int = 20,
        eval_batch_size: int | None = None,
        bptt: int = 35,
        max_vocab_size: int | None = 10_000,
        split: tuple[float, float, float] = (0.8, 0.1, 0.1),
        num_workers: int = 0,
        train_tokens: int | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("data.batch_size", batch_size), ("data.bptt", bptt), ("data.train_tokens", train_tokens)):
            if name == "data.train_tokens" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.save_hyperparameters()
        self.root = None if root is None else Path(root)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.bptt = bptt
        self.max_vocab = max_vocab_size
        self.split = tuple(split)
        self.num_workers = num_workers
        self.train_tokens = train_tokens
        self.vocab: Vocabulary | None = None
        self.ids: dict[str, torch.Tensor] = {}

    def _lines(self) -> dict[str, list[str]]:
        if self.root is None:
            train, valid, test = split_lines(embedded_corpus(), self.split)  # type: ignore[arg-type]
            return {"train": train, "valid": valid, "test": test}
        return {s: read_ptb_split(self.root, s) for s in SPLITS}

    def prepare_data(self) -> None:
        """Nothing to download: fail early, with the fix, if a PTB file is missing."""
        if self.root is not None:
            for split in SPLITS:
                path = self.root / f"ptb.{split}.txt"
                if not path.is_file():
                    read_ptb_split(self.root, split)  # raises the explanatory error

    def setup(self, stage: str | None = None) -> None:
        """Tokenize every split and build the vocabulary (once; later calls are free)."""
        if self.vocab is not None:
            return
        tokens = {s: ptb_tokens(lines) for s, lines in self._lines().items()}
        vocab = Vocabulary.build(tokens["train"], self.max_vocab)
        self.ids = {s: vocab.encode(t) for s, t in tokens.items()}
        if self.train_tokens is not None:
            self.ids["train"] = self.ids["train"][: self.train_tokens]
        self.vocab = vocab

    @property
    def vocab_size(self) -> int:
        """Size of the built vocabulary (call :meth:`setup` first)."""
        if self.vocab is None:
            self.setup()
        assert self.vocab is not None
        return len(self.vocab)

    def windows(self, split: str) -> BPTTWindows:
        """The BPTT windows of ``split`` ("train", "valid" or "test")."""
        self.setup()
        batch = self.batch_size if split == "train" else self.eval_batch_size
        try:
            streams = batchify(self.ids[split], batch)
        except ValueError as err:
            raise ValueError(f"{split} split: {err}") from None
        return BPTTWindows(streams, self.bptt)

    def _loader(self, split: str) -> DataLoader:
        return DataLoader(self.windows(split), batch_size=None, shuffle=False, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
