"""Word-level corpora in the Penn Treebank (PTB) format, and the vocabulary that maps them to ids.

PTB format: one sentence per line, lower-case words separated by spaces, numbers written ``N``, rare words already
``<unk>``; every line ends with an ``<eos>`` token. When no PTB files are at hand, :func:`embedded_corpus` builds a
corpus in the same format from English text that ships with every CPython install (the standard library's
``pydoc_data/topics.py``, the text of ``help()``), so the language-model experiments run on any machine.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

EOS = "<eos>"
UNK = "<unk>"

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?|[0-9]+(?:[.,][0-9]+)*")
_SENTENCE_END = re.compile(r"(?<=[.!?:;])\s+")


def ptb_tokens(lines: Iterable[str]) -> list[str]:
    """Tokens of PTB-format lines: the words of each non-empty line followed by ``<eos>``."""
    tokens: list[str] = []
    for line in lines:
        words = line.split()
        if words:
            tokens.extend(words)
            tokens.append(EOS)
    return tokens


def normalize_sentence(text: str) -> str:
    """Free English text -> one PTB-style line: lower-case words, numbers as ``N``, punctuation dropped."""
    words = ("N" if w[0].isdigit() else w for w in _WORD.findall(text.lower()))
    return " ".join(words)


def text_to_ptb_lines(text: str, min_words: int = 3) -> list[str]:
    """Split free text into paragraphs (blank lines), then sentences, and normalize each to a PTB line.

    Sentences with fewer than ``min_words`` words (headings, code fragments) are dropped.
    """
    lines: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        flat = " ".join(paragraph.split())
        for sentence in _SENTENCE_END.split(flat):
            line = normalize_sentence(sentence)
            if len(line.split()) >= min_words:
                lines.append(line)
    return lines


def embedded_corpus() -> list[str]:
    """PTB-format lines built from ``pydoc_data.topics`` (topics in sorted order, so the corpus is deterministic).

    About 4.5k sentences and 69k tokens (3.1k distinct) on CPython 3.11; the exact text changes with the Python version.
    """
    from pydoc_data.topics import topics  # imported lazily: ~0.5 MB of text

    lines: list[str] = []
    for name in sorted(topics):
        lines.extend(text_to_ptb_lines(topics[name]))
    return lines


def split_lines(lines: Sequence[str], fractions: tuple[float, float, float]) -> tuple[list[str], list[str], list[str]]:
    """Contiguous train/valid/test split of ``lines`` by the given fractions (which must sum to 1)."""
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be three positive numbers summing to 1, got {tuple(fractions)!r}")
    n = len(lines)
    a = int(round(n * fractions[0]))
    b = int(round(n * (fractions[0] + fractions[1])))
    return list(lines[:a]), list(lines[a:b]), list(lines[b:])


@dataclass(frozen=True)
class Vocabulary:
    """Word <-> id map. Ids are ordered by decreasing training frequency (ties: alphabetical); ``<unk>`` is present."""

    words: tuple[str, ...]

    @classmethod
    def build(cls, tokens: Iterable[str], max_size: int | None = None) -> Vocabulary:
        """The ``max_size`` most frequent tokens, ``<unk>`` and ``<eos>`` counted in; the rest map to ``<unk>``."""
        if max_size is not None and (isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 3):
            raise ValueError(
                f"max_vocab_size must be an integer >= 3 (room for <unk>, <eos> and a word), got {max_size!r}"
            )
        counts = Counter(tokens)
        counts.pop(UNK, None)
        counts.pop(EOS, None)
        ranked = sorted(counts, key=lambda w: (-counts[w], w))
        if max_size is not None:
            ranked = ranked[: max_size - 2]
        return cls((UNK, EOS, *ranked))

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {w: i for i, w in enumerate(self.words)})

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self._index  # type: ignore[attr-defined]

    @property
    def unk_id(self) -> int:
        return self._index[UNK]  # type: ignore[attr-defined]

    def encode(self, tokens: Iterable[str]) -> torch.Tensor:
        """Token ids (int64); words outside the vocabulary become ``<unk>``."""
        index, unk = self._index, self.unk_id  # type: ignore[attr-defined]
        return torch.tensor([index.get(t, unk) for t in tokens], dtype=torch.long)

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words of token ids."""
        return [self.words[int(i)] for i in ids]
