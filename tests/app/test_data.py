"""DataModules: the IDX reader and Fashion-MNIST on the real files, PTB-format corpora and BPTT batching."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
import torch

from lightning_ard.app.data import BPTTWindows, FashionMNISTDataModule, PTBDataModule, Vocabulary, batchify, read_idx
from lightning_ard.app.data.corpus import EOS, UNK, embedded_corpus, normalize_sentence, ptb_tokens, split_lines
from lightning_ard.app.data.fashion_mnist import DEFAULT_ROOT, load_split
from lightning_ard.app.data.idx import IMAGES_MAGIC, LABELS_MAGIC, IDXFormatError

FASHION = Path(DEFAULT_ROOT)


def write_idx(path: Path, magic: int, shape: tuple[int, ...], payload: bytes | None = None) -> Path:
    """A gzip IDX file with the given header; payload defaults to the right number of zero bytes."""
    n = 1
    for s in shape:
        n *= s
    header = struct.pack(">I", magic) + struct.pack(f">{len(shape)}I", *shape)
    with gzip.open(path, "wb") as f:
        f.write(header + (bytes(n) if payload is None else payload))
    return path


# --- IDX reader -------------------------------------------------------------------------------------------------


def test_read_idx_real_files_have_the_documented_headers_and_shapes() -> None:
    images = read_idx(FASHION / "t10k-images-idx3-ubyte.gz", IMAGES_MAGIC, (10_000, 28, 28))
    labels = read_idx(FASHION / "t10k-labels-idx1-ubyte.gz", LABELS_MAGIC, (10_000,))
    assert images.dtype == torch.uint8 and images.shape == (10_000, 28, 28)
    assert labels.dtype == torch.uint8 and labels.shape == (10_000,)
    assert int(images.max()) == 255 and set(labels.unique().tolist()) == set(range(10))
    assert torch.bincount(labels.long()).tolist() == [1000] * 10  # the test set is balanced


def test_read_idx_round_trip_and_plain_files(tmp_path: Path) -> None:
    data = bytes(range(24))
    path = write_idx(tmp_path / "x.gz", IMAGES_MAGIC, (2, 3, 4), data)
    assert read_idx(path).flatten().tolist() == list(range(24))
    plain = tmp_path / "x"
    plain.write_bytes(gzip.decompress(path.read_bytes()))
    assert read_idx(plain, IMAGES_MAGIC, (2, None, 4)).shape == (2, 3, 4)


def test_read_idx_rejects_wrong_magic_naming_file_and_values(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "labels.gz", LABELS_MAGIC, (5,))
    with pytest.raises(IDXFormatError, match=r"labels\.gz: magic number 0x00000801, expected 0x00000803"):
        read_idx(path, IMAGES_MAGIC)


def test_read_idx_rejects_wrong_shape_and_truncated_payload(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "img.gz", IMAGES_MAGIC, (3, 28, 28))
    with pytest.raises(IDXFormatError, match=r"shape \(3, 28, 28\), expected \(60000, 28, 28\)"):
        read_idx(path, IMAGES_MAGIC, (60_000, 28, 28))
    short = write_idx(tmp_path / "short.gz", IMAGES_MAGIC, (3, 28, 28), bytes(100))
    with pytest.raises(IDXFormatError, match="short.gz: 100 data bytes"):
        read_idx(short)
    broken = tmp_path / "broken.gz"
    broken.write_bytes(path.read_bytes()[:20])
    with pytest.raises(IDXFormatError, match="broken.gz: cannot read"):
        read_idx(broken)


# --- Fashion-MNIST ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fashion() -> FashionMNISTDataModule:
    dm = FashionMNISTDataModule(batch_size=64, eval_batch_size=500, val_size=5_000)
    dm.prepare_data()
    dm.setup()
    return dm


def test_fashion_mnist_splits_and_batches(fashion: FashionMNISTDataModule) -> None:
    assert (len(fashion.train_set), len(fashion.val_set), len(fashion.test_set)) == (55_000, 5_000, 10_000)
    x, y = next(iter(fashion.train_dataloader()))
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (64,) and y.dtype == torch.int64 and 0 <= int(y.min()) and int(y.max()) <= 9
    xv, _ = next(iter(fashion.val_dataloader()))
    assert xv.shape == (500, 1, 28, 28)
    # Normalized with the training statistics: about zero mean, unit standard deviation.
    train_x = fashion.train_set.tensors[0]
    assert abs(float(train_x.mean())) < 0.02 and abs(float(train_x.std()) - 1.0) < 0.02


def test_fashion_mnist_split_is_disjoint_and_seeded(fashion: FashionMNISTDataModule) -> None:
    images, _ = load_split(FASHION, "train")
    train_x, val_x = fashion.train_set.tensors[0], fashion.val_set.tensors[0]
    assert train_x.shape[0] + val_x.shape[0] == images.shape[0]
    other = FashionMNISTDataModule(val_size=5_000, split_seed=0)
    other.setup("fit")
    assert torch.equal(other.val_set.tensors[1], fashion.val_set.tensors[1])
    reseeded = FashionMNISTDataModule(val_size=5_000, split_seed=1)
    reseeded.setup("fit")
    assert not torch.equal(reseeded.val_set.tensors[1], fashion.val_set.tensors[1])


def test_fashion_mnist_missing_files_error_names_path_package_and_override(tmp_path: Path) -> None:
    dm = FashionMNISTDataModule(root=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert str(tmp_path / "nowhere" / "train-images-idx3-ubyte") in message
    assert "apt-get install dataset-fashion-mnist" in message and "data.root=" in message


def test_fashion_mnist_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="data.val_size must be an integer in"):
        FashionMNISTDataModule(val_size=60_000)
    with pytest.raises(ValueError, match="data.batch_size must be a positive integer, got 0"):
        FashionMNISTDataModule(batch_size=0)


# --- corpus, vocabulary, BPTT -----------------------------------------------------------------------------------


def test_normalize_sentence_is_ptb_style() -> None:
    assert normalize_sentence("The 3 values, e.g. x's Value!") == "the N values e g x's value"
    assert ptb_tokens(["a b", "", "  c "]) == ["a", "b", EOS, "c", EOS]


def test_embedded_corpus_is_deterministic_english_text() -> None:
    lines = embedded_corpus()
    assert lines == embedded_corpus()
    tokens = ptb_tokens(lines)
    assert len(lines) > 1_000 and len(tokens) > 30_000
    assert {"the", "a", "of", "N", EOS} <= set(tokens)
    assert all(t == t.lower() for t in tokens if t != "N")  # PTB style: lower case, numbers as N
    train, valid, test = split_lines(lines, (0.8, 0.1, 0.1))
    assert train + valid + test == lines and len(valid) > 0 and len(test) > 0


def test_vocabulary_cap_maps_rare_words_to_unk() -> None:
    vocab = Vocabulary.build("a a a b b c d".split(), max_size=4)
    assert vocab.words == (UNK, EOS, "a", "b") and len(vocab) == 4
    assert vocab.encode(["a", "c", "zzz", EOS]).tolist() == [2, vocab.unk_id, vocab.unk_id, 1]
    with pytest.raises(ValueError, match="max_vocab_size must be an integer >= 3"):
        Vocabulary.build(["a"], max_size=2)


def test_batchify_and_windows_follow_zaremba_layout() -> None:
    ids = torch.arange(103)
    streams = batchify(ids, 4)
    assert streams.shape == (4, 25) and streams[1, 0] == 25  # row r is the r-th contiguous part; tail dropped
    windows = BPTTWindows(streams, bptt=10)
    assert len(windows) == 3  # 24 predicted positions per row: 10 + 10 + 4
    x0, y0 = windows[0]
    assert x0.shape == (4, 10) and torch.equal(y0, x0 + 1)  # targets are the next tokens
    x1, _ = windows[1]
    assert torch.equal(x1[:, 0], y0[:, -1])  # each row's stream continues in the next window
    x2, y2 = windows[2]
    assert x2.shape == (4, 4) and torch.equal(y2[:, -1], streams[:, -1])
    assert windows.num_tokens == 4 * 24
    with pytest.raises(ValueError, match="too short for batch_size=60"):
        batchify(ids, 60)


def test_ptb_datamodule_on_embedded_corpus() -> None:
    dm = PTBDataModule(root=None, batch_size=8, eval_batch_size=4, bptt=20, max_vocab_size=500)
    dm.prepare_data()
    dm.setup()
    assert dm.vocab_size == 500 and dm.vocab is not None and UNK in dm.vocab
    assert int((dm.ids["train"] == dm.vocab.unk_id).sum()) > 0
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 20) and y.shape == (8, 20) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    xv, _ = next(iter(dm.val_dataloader()))
    assert xv.shape[0] == 4
    assert len(dm.test_dataloader()) > 0


def test_ptb_datamodule_reads_ptb_files(tmp_path: Path) -> None:
    text = "the cat sat on the mat\n the dog sat N times\n"
    for split in ("train", "valid", "test"):
        (tmp_path / f"ptb.{split}.txt").write_text(text * (5 if split == "train" else 2))
    dm = PTBDataModule(root=tmp_path, batch_size=2, bptt=3, max_vocab_size=None)
    dm.setup()
    assert set(dm.vocab.words) == {UNK, EOS, "the", "cat", "sat", "on", "mat", "dog", "N", "times"}
    assert dm.vocab.decode(dm.ids["train"][:7]) == ["the", "cat", "sat", "on", "the", "mat", EOS]


def test_ptb_missing_file_error_names_path_and_fixes(tmp_path: Path) -> None:
    (tmp_path / "ptb.train.txt").write_text("a b c\n")
    dm = PTBDataModule(root=tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        dm.prepare_data()
    assert str(tmp_path / "ptb.valid.txt") in str(info.value)
    assert "data.root=" in str(info.value) and "data.root=null" in str(info.value)


def test_fashion_mnist_prepare_data_checks_every_split(tmp_path: Path) -> None:
    """prepare_data validates the header and size of all four files (streamed), not only that they exist."""
    for split, (images, labels) in {"train": (60_000, 60_000), "test": (10_000, 10_000)}.items():
        stems = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                 "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}[split]  # fmt: skip
        write_idx(tmp_path / f"{stems[0]}.gz", IMAGES_MAGIC, (images, 28, 28))
        write_idx(tmp_path / f"{stems[1]}.gz", LABELS_MAGIC, (labels,))
    FashionMNISTDataModule(root=tmp_path).prepare_data()  # all four well formed
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", LABELS_MAGIC, (10_000,), payload=bytes(9_000))
    message = r"t10k-labels-idx1-ubyte.gz: 9000 data bytes, but the header's shape \(10000,\) needs 10000"
    with pytest.raises(IDXFormatError, match=message):
        FashionMNISTDataModule(root=tmp_path).prepare_data()
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", LABELS_MAGIC, (9_000,))
    with pytest.raises(IDXFormatError, match=r"shape \(9000,\), expected \(10000,\)"):
        FashionMNISTDataModule(root=tmp_path).prepare_data()


def test_check_idx_matches_read_idx(tmp_path: Path) -> None:
    from lightning_ard.app.data.idx import check_idx

    path = write_idx(tmp_path / "x.gz", IMAGES_MAGIC, (3, 4, 5), payload=bytes(range(60)))
    assert check_idx(path, IMAGES_MAGIC, (3, None, 5)) == (3, 4, 5) == tuple(read_idx(path).shape)
    bad = write_idx(tmp_path / "y.gz", IMAGES_MAGIC, (3, 4, 5), payload=bytes(59))
    with pytest.raises(IDXFormatError, match="59 data bytes"):
        check_idx(bad)


def test_train_tokens_keeps_the_first_tokens_and_the_whole_vocabulary() -> None:
    full = PTBDataModule(batch_size=4, bptt=5)
    full.setup()
    part = PTBDataModule(batch_size=4, bptt=5, train_tokens=1000)
    part.setup()
    assert torch.equal(part.ids["train"], full.ids["train"][:1000])
    assert torch.equal(part.ids["valid"], full.ids["valid"]) and len(part.vocab) == len(full.vocab)
    assert part.windows("train").num_tokens <= 1000
    with pytest.raises(ValueError, match="data.train_tokens must be a positive integer, got 0"):
        PTBDataModule(train_tokens=0)
