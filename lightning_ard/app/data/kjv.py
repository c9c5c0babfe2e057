"""The King James Bible as a PTB-format corpus of PTB size, built from Debian's ``bible-kjv`` package.

``bible -f "Gen1:1-Rev22:21"`` prints the 31,102 verses, one per line (``Ge1:1 In the beginning God created ...``).
Each verse becomes one PTB line: references removed, lower case, numbers as ``N`` (the KJV spells numbers out, so
none occur), the punctuation ``, . ; : ? !`` kept as tokens of their own, possessives split as in the Penn Treebank
(``god's`` -> ``god 's``, ``fathers'`` -> ``fathers '``), hyphenated words kept whole, parentheses dropped; every
line ends with ``<eos>``. Punctuation is kept (Mikolov's PTB dropped it) so the training split comes close to PTB's
size: 809k tokens against 930k (without it, 700k).

The split is by book, fixed: :data:`VALID_BOOKS` and :data:`TEST_BOOKS` each mix history, wisdom or prophecy, a
gospel and epistles, and give train/valid/test about 85.6/6.8/7.6 % of the tokens, PTB's proportions. Words outside
the 10k vocabulary of the training split (``<unk>`` and ``<eos>`` counted in, as in PTB) are written as ``<unk>``.
The three files ``kjv.{train,valid,test}.txt`` are built once into a cache folder; later runs read only them
(delete the folder to rebuild).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from lightning_ard.app.data.corpus import UNK, Vocabulary, ptb_tokens
from lightning_ard.app.data.ptb import SPLITS, PTBDataModule

BIBLE_COMMAND: tuple[str, ...] = ("bible", "-f", "Gen1:1-Rev22:21")
"""The reader of ``bible-kjv`` asked for every verse, one per line with its reference."""

BIBLE_TIMEOUT_S = 120.0
"""Seconds the ``bible`` command may take (it needs about 0.2 s)."""

MISSING_PACKAGE = "the King James Bible corpus needs the Debian package bible-kjv: apt-get install -y bible-kjv"

VOCAB_SIZE = 10_000
"""Words of the cached corpus' vocabulary, ``<unk>`` and ``<eos>`` included (PTB's size)."""

BOOKS: tuple[tuple[str, str], ...] = (
    ("Ge", "Genesis"), ("Exo", "Exodus"), ("Lev", "Leviticus"), ("Num", "Numbers"), ("Deu", "Deuteronomy"),
    ("Josh", "Joshua"), ("Jdgs", "Judges"), ("Ruth", "Ruth"), ("1Sm", "1 Samuel"), ("2Sm", "2 Samuel"),
    ("1Ki", "1 Kings"), ("2Ki", "2 Kings"), ("1Chr", "1 Chronicles"), ("2Chr", "2 Chronicles"), ("Ezra", "Ezra"),
    ("Neh", "Nehemiah"), ("Est", "Esther"), ("Job", "Job"), ("Psa", "Psalms"), ("Prv", "Proverbs"),
    ("Eccl", "Ecclesiastes"), ("SSol", "Song of Solomon"), ("Isa", "Isaiah"), ("Jer", "Jeremiah"),
    ("Lam", "Lamentations"), ("Eze", "Ezekiel"), ("Dan", "Daniel"), ("Hos", "Hosea"), ("Joel", "Joel"),
    ("Amos", "Amos"), ("Obad", "Obadiah"), ("Jonah", "Jonah"), ("Mic", "Micah"), ("Nahum", "Nahum"),
    ("Hab", "Habakkuk"), ("Zep", "Zephaniah"), ("Hag", "Haggai"), ("Zec", "Zechariah"), ("Mal", "Malachi"),
    ("Mat", "Matthew"), ("Mark", "Mark"), ("Luke", "Luke"), ("John", "John"), ("Acts", "Acts"), ("Rom", "Romans"),
    ("1Cor", "1 Corinthians"), ("2Cor", "2 Corinthians"), ("Gal", "Galatians"), ("Eph", "Ephesians"),
    ("Phi", "Philippians"), ("Col", "Colossians"), ("1Th", "1 Thessalonians"), ("2Th", "2 Thessalonians"),
    ("1Tim", "1 Timothy"), ("2Tim", "2 Timothy"), ("Titus", "Titus"), ("Phmn", "Philemon"), ("Heb", "Hebrews"),
    ("Jas", "James"), ("1Pet", "1 Peter"), ("2Pet", "2 Peter"), ("1Jn", "1 John"), ("2Jn", "2 John"),
    ("3Jn", "3 John"), ("Jude", "Jude"), ("Rev", "Revelation"),
)  # fmt: skip
"""The 66 books in canonical order: (abbreviation as ``bible -f`` prints it, name)."""

VALID_BOOKS: tuple[str, ...] = ("Joshua", "Proverbs", "Habakkuk", "Mark", "Ephesians")
TEST_BOOKS: tuple[str, ...] = ("Judges", "Daniel", "Jonah", "John", "Hebrews", "James")
"""Books of the validation and test splits; every other book is training text."""

_BOOK_NAME = dict(BOOKS)
_REFERENCE = re.compile(r"(?P<book>[1-3]?[A-Za-z]+)(?P<chapter>[0-9]+):(?P<verse>[0-9]+)(?:\s+|$)")
_TOKEN = re.compile(r"[a-z]+(?:-[a-z]+)*|'s\b|'|[0-9]+(?:[.,][0-9]+)*|[,.;:?!]")


class Verse(NamedTuple):
    """One verse of the ``bible`` output: book name (as in :data:`BOOKS`), chapter, verse number and raw text."""

    book: str
    chapter: int
    verse: int
    text: str


def parse_bible(output: str) -> list[Verse]:
    """The verses of ``bible -f`` output; a line without a reference continues the verse before it (wrapped text)."""
    verses: list[Verse] = []
    for number, line in enumerate(output.splitlines(), start=1):
        if not line.strip():
            continue
        match = _REFERENCE.match(line)
        if match is None:
            if not verses:
                raise ValueError(f"`bible` output line {number} has no verse reference (e.g. Ge1:1): {line[:80]!r}")
            last = verses[-1]
            verses[-1] = last._replace(text=f"{last.text} {line.strip()}")
            continue
        abbreviation = match["book"]
        if abbreviation not in _BOOK_NAME:
            raise ValueError(
                f"`bible` output line {number}: unknown book {abbreviation!r} (known: {', '.join(_BOOK_NAME)})"
            )
        verses.append(
            Verse(_BOOK_NAME[abbreviation], int(match["chapter"]), int(match["verse"]), line[match.end() :].strip())
        )
    return verses


def verse_line(text: str) -> str:
    """A verse's text -> one PTB line (lower case, numbers as ``N``, punctuation and ``'s`` as their own tokens)."""
    return " ".join("N" if t[0].isdigit() else t for t in _TOKEN.findall(text.lower()))


def split_by_book(verses: Sequence[Verse]) -> dict[str, list[str]]:
    """PTB lines of the train/valid/test splits (:data:`VALID_BOOKS`, :data:`TEST_BOOKS`, the rest), in text order."""
    split_of = {**{b: "valid" for b in VALID_BOOKS}, **{b: "test" for b in TEST_BOOKS}}
    lines: dict[str, list[str]] = {s: [] for s in SPLITS}
    for verse in verses:
        line = verse_line(verse.text)
        if line:
            lines[split_of.get(verse.book, "train")].append(line)
    return lines


def run_bible(command: Sequence[str] = BIBLE_COMMAND, timeout: float = BIBLE_TIMEOUT_S) -> str:
    """Stdout of the ``bible`` reader; errors name the command, and the package when it is not installed."""
    shown = " ".join(f'"{a}"' if " " in a or ":" in a else a for a in command)
    if shutil.which(command[0]) is None:
        raise FileNotFoundError(
            f"{MISSING_PACKAGE} (the command `{command[0]}` is not on PATH). Without it, train on the embedded "
            f"corpus: `data=ptb data.root=null` (or on PTB files: `data=ptb data.root=/path/to/ptb`)."
        )
    try:
        done = subprocess.run(
            list(command), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"`{shown}` did not finish within {timeout:g} s") from None
    if done.returncode != 0:
        raise RuntimeError(
            f"`{shown}` failed with exit status {done.returncode}: {done.stderr.strip()[:500] or '(no stderr)'}. "
            f"Reinstall the text with `apt-get install --reinstall -y bible-kjv bible-kjv-text`."
        )
    return done.stdout


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/lightning_ard/kjv`` (``~/.cache/lightning_ard/kjv`` when the variable is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lightning_ard" / "kjv"


def corpus_files(cache_dir: str | Path) -> dict[str, Path]:
    """Split -> ``cache_dir/kjv.<split>.txt``."""
    return {s: Path(cache_dir) / f"kjv.{s}.txt" for s in SPLITS}


def _write_atomic(path: Path, lines: Sequence[str]) -> None:
    """Write via a unique temporary file and a rename, so readers (or a second builder) never see half a file."""
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", delete=False
    ) as f:
        f.write("".join(f"{line}\n" for line in lines))
    os.replace(f.name, path)


def build_corpus(cache_dir: str | Path | None = None) -> dict[str, Path]:
    """Build ``kjv.{train,valid,test}.txt`` in ``cache_dir`` (default :func:`default_cache_dir`) unless all three
    exist; returns their paths. Runs ``bible`` only when building."""
    files = corpus_files(default_cache_dir() if cache_dir is None else cache_dir)
    if all(p.is_file() for p in files.values()):
        return files
    verses = parse_bible(run_bible())
    missing = [name for _, name in BOOKS if name not in {v.book for v in verses}]
    if missing:
        raise RuntimeError(
            f"`bible` printed {len(verses)} verses but none of {', '.join(missing)}; reinstall the text with "
            f"`apt-get install --reinstall -y bible-kjv bible-kjv-text`"
        )
    lines = split_by_book(verses)
    vocab = Vocabulary.build(ptb_tokens(lines["train"]), VOCAB_SIZE)
    files["train"].parent.mkdir(parents=True, exist_ok=True)
    for split in ("valid", "test", "train"):  # train last: the cache counts as built once all three exist
        unked = [" ".join(w if w in vocab else UNK for w in line.split()) for line in lines[split]]
        _write_atomic(files[split], unked)
    return files


class KJVDataModule(PTBDataModule):
    """The King James Bible corpus as BPTT windows ``(inputs, targets)`` of shape ``[batch, <= bptt]`` (int64).

    :meth:`prepare_data` builds the cached PTB-format files once (it needs ``bible-kjv``); :meth:`setup` reads them
    with the PTB reader, so the windows and the vocabulary follow :class:`PTBDataModule` exactly (setup builds the
    files itself if prepare_data was skipped).

    Args:
        cache_dir: folder of ``kjv.{train,valid,test}.txt`` (``None``: :func:`default_cache_dir`).
        batch_size, eval_batch_size, bptt, num_workers, train_tokens: as in :class:`PTBDataModule`.
        max_vocab_size: cap on the vocabulary (``None`` or at most :data:`VOCAB_SIZE`, the cached files' size).
    """

    def __init__(
        self,
        cache_dir: str | Path | None = None,
        batch_size: int = 20,
        eval_batch_size: int | None = None,
        bptt: int = 35,
        max_vocab_size: int | None = VOCAB_SIZE,
        num_workers: int = 0,
        train_tokens: int | None = None,
    ) -> None:
        in_range = isinstance(max_vocab_size, int) and not isinstance(max_vocab_size, bool) and 3 <= max_vocab_size
        if max_vocab_size is not None and not (in_range and max_vocab_size <= VOCAB_SIZE):
            raise ValueError(
                f"data.max_vocab_size must be null or an integer in [3, {VOCAB_SIZE}] (the cached KJV files have a "
                f"{VOCAB_SIZE}-word vocabulary), got {max_vocab_size!r}"
            )
        self.cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
        super().__init__(
            self.cache_dir, batch_size, eval_batch_size, bptt, max_vocab_size,
            num_workers=num_workers, train_tokens=train_tokens,
        )  # fmt: skip
        self.save_hyperparameters(ignore=["root", "split"])  # PTB's `root` and `split` mean nothing here

    def prepare_data(self) -> None:
        """Build the cached corpus if it is not there yet (once per node; it runs ``bible``, about a second)."""
        build_corpus(self.cache_dir)

    def _lines(self) -> dict[str, list[str]]:
        # Builds the cache too when setup() comes first (``vocab_size`` calls it); a no-op after prepare_data().
        files = build_corpus(self.cache_dir)
        return {s: p.read_text(encoding="utf-8").splitlines() for s, p in files.items()}
