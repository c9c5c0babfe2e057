"""The King James Bible corpus: the parser on an embedded sample of ``bible -f`` output and a stand-in ``bible``
command (no package needed), then the real text when Debian's ``bible-kjv`` is installed (CI installs it)."""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path

import pytest

from lightning_ard.app.data import KJVDataModule
from lightning_ard.app.data import kjv as kjv_module
from lightning_ard.app.data.corpus import EOS, UNK
from lightning_ard.app.data.kjv import (
    BOOKS,
    MISSING_PACKAGE,
    TEST_BOOKS,
    VALID_BOOKS,
    VOCAB_SIZE,
    Verse,
    build_corpus,
    corpus_files,
    default_cache_dir,
    parse_bible,
    run_bible,
    split_by_book,
    verse_line,
)
from lightning_ard.app.data.ptb import SPLITS

# Verbatim `bible -f` output (bible-kjv 4.36), one verse per line; the Psalm is wrapped as a terminal would show it.
SAMPLE = """\
Ge1:1 In the beginning God created the heaven and the earth.
Ge4:9 And the LORD said unto Cain, Where is Abel thy brother? And he said, I know not: Am I my brother's keeper?
Josh1:1 Now after the death of Moses the servant of the LORD it came to pass, that the LORD spake unto Joshua the son of Nun, Moses' minister, saying,
Jdgs21:25 In those days there was no king in Israel: every man did that which was right in his own eyes.
Psa17:7 Shew thy marvellous loving-kindness, O thou that savest by thy right hand them which put their trust in
thee from those that rise up against them.
Psa84:1 How amiable are thy tabernacles, O LORD of hosts!
2Cor5:7 (For we walk by faith, not by sight:)
Rev22:21 The grace of our Lord Jesus Christ be with you all. Amen.
"""  # noqa: E501

HAS_BIBLE = shutil.which("bible") is not None
needs_bible = pytest.mark.skipif(
    not HAS_BIBLE, reason="needs the `bible` command of Debian's bible-kjv (apt-get install -y bible-kjv; CI has it)"
)
# PTB's train/valid/test token counts (Mikolov's release, <eos> included): the proportions the split aims at.
PTB_TOKENS = {"train": 929_589, "valid": 73_760, "test": 82_430}


def fake_bible(folder: Path, stdout: str = "", status: int = 0, stderr: str = "", sleep: float = 0.0) -> Path:
    """A stand-in `bible` in ``folder`` that logs its arguments to ``folder/calls`` and prints ``stdout``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "out.txt").write_text(stdout, encoding="utf-8")
    script = folder / "bible"
    script.write_text(
        f'#!/bin/sh\necho "$@" >> "{folder}/calls"\nsleep {sleep}\ncat "{folder}/out.txt"\n'
        f'echo "{stderr}" >&2\nexit {status}\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return folder / "calls"


def every_book_output() -> str:
    """`bible -f`-style output of every book in order: the sample's real verses, two made-up ones for the others."""
    lines = []
    for abbreviation, name in BOOKS:
        real = [f"{abbreviation}{v.chapter}:{v.verse} {v.text}" for v in parse_bible(SAMPLE) if v.book == name]
        if real:
            lines += real
        else:
            lines += [f"{abbreviation}1:1 The words of {name}, the 2 tables.", f"{abbreviation}1:2 And Zoar's end."]
    return "\n".join(lines) + "\n"


# --- parser and tokenizer (no package needed) -------------------------------------------------------------------


def test_parse_bible_reads_references_and_joins_wrapped_lines() -> None:
    verses = parse_bible(SAMPLE)
    assert [(v.book, v.chapter, v.verse) for v in verses] == [
        ("Genesis", 1, 1), ("Genesis", 4, 9), ("Joshua", 1, 1), ("Judges", 21, 25), ("Psalms", 17, 7),
        ("Psalms", 84, 1), ("2 Corinthians", 5, 7), ("Revelation", 22, 21),
    ]  # fmt: skip
    assert verses[0].text == "In the beginning God created the heaven and the earth."
    assert verses[4].text.endswith("put their trust in thee from those that rise up against them.")


def test_parse_bible_errors_name_the_line_and_the_fault() -> None:
    with pytest.raises(ValueError, match=r"line 1 has no verse reference \(e\.g\. Ge1:1\): \"Hit '\?' for help\.\""):
        parse_bible("Hit '?' for help.\nGe1:1 In the beginning.")
    with pytest.raises(ValueError, match=r"line 2: unknown book 'Gen' \(known: Ge, Exo, "):
        parse_bible("Ge1:1 In the beginning.\nGen1:2 And the earth.")


def test_verse_line_is_ptb_style_with_punctuation_tokens() -> None:
    verses = parse_bible(SAMPLE)
    assert verse_line(verses[0].text) == "in the beginning god created the heaven and the earth ."
    assert verse_line(verses[1].text) == (
        "and the lord said unto cain , where is abel thy brother ? "
        "and he said , i know not : am i my brother 's keeper ?"
    )
    assert verse_line(verses[2].text).endswith("the son of nun , moses ' minister , saying ,")
    assert "marvellous loving-kindness , o thou" in verse_line(verses[4].text)  # hyphenated words stay whole
    assert verse_line(verses[6].text) == "for we walk by faith , not by sight :"  # parentheses dropped
    assert verse_line("Of 12 tribes, 144,000 and 3.5 parts!") == "of N tribes , N and N parts !"


def test_split_by_book_puts_each_verse_in_its_books_split() -> None:
    assert set(VALID_BOOKS) | set(TEST_BOOKS) <= {name for _, name in BOOKS}
    assert not set(VALID_BOOKS) & set(TEST_BOOKS)
    lines = split_by_book(parse_bible(SAMPLE))
    assert lines["valid"] == [verse_line(parse_bible(SAMPLE)[2].text)]  # Joshua
    judges = "in those days there was no king in israel : every man did that which was right in his own eyes ."
    assert lines["test"] == [judges]
    assert len(lines["train"]) == 6
    assert lines["train"][-1] == "the grace of our lord jesus christ be with you all . amen ."
    assert split_by_book([Verse("Genesis", 1, 1, "( )")]) == {"train": [], "valid": [], "test": []}  # no empty lines


# --- the `bible` command and the cache, with a stand-in command (no package needed) ----------------------------


def test_missing_bible_command_names_the_package_and_the_embedded_corpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    dm = KJVDataModule(cache_dir=tmp_path / "cache")
    with pytest.raises(FileNotFoundError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert message.startswith(MISSING_PACKAGE) and "`bible` is not on PATH" in message
    assert "data=ptb data.root=null" in message
    assert not (tmp_path / "cache").exists()  # nothing half-built


def test_bible_failures_name_the_command_status_and_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    fake_bible(tmp_path / "bin", status=255, stderr="Cannot open data file /usr/share/bible/bible.data")
    with pytest.raises(RuntimeError, match=r'`bible -f "Gen1:1-Rev22:21"` failed with exit status 255: Cannot open'):
        run_bible()
    fake_bible(tmp_path / "bin", sleep=5)
    with pytest.raises(RuntimeError, match=r'`bible -f "Gen1:1-Rev22:21"` did not finish within 0.5 s'):
        run_bible(timeout=0.5)
    fake_bible(tmp_path / "bin", stdout=SAMPLE)
    with pytest.raises(RuntimeError, match=r"`bible` printed 8 verses but none of Exodus, Leviticus, "):
        build_corpus(tmp_path / "cache")
    assert not any(p.is_file() for p in corpus_files(tmp_path / "cache").values())


def test_build_writes_ptb_files_once_and_the_datamodule_reads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    calls = fake_bible(tmp_path / "bin", stdout=every_book_output())
    dm = KJVDataModule(cache_dir=tmp_path / "cache", batch_size=2, bptt=4)
    dm.prepare_data()
    files = corpus_files(tmp_path / "cache")
    text = {s: files[s].read_text(encoding="utf-8") for s in SPLITS}
    assert text["train"].startswith("in the beginning god created the heaven and the earth .\n")
    assert text["train"].endswith("the grace of our lord jesus christ be with you all . amen .\n")
    assert "the words of exodus , the N tables .\nand zoar 's end .\n" in text["train"]
    verses = parse_bible(every_book_output())
    assert text["valid"].count("\n") == sum(v.book in VALID_BOOKS for v in verses)
    assert text["test"].count("\n") == sum(v.book in TEST_BOOKS for v in verses)
    assert calls.read_text().split("\n") == ["-f Gen1:1-Rev22:21", ""]
    dm.prepare_data()
    KJVDataModule(cache_dir=tmp_path / "cache").setup()
    assert calls.read_text().count("\n") == 1  # built once, then read from the cache
    dm.setup()
    assert dm.vocab is not None and dm.vocab_size == len(set(text["train"].split())) + 2  # + <unk>, <eos>
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 4) and dm.vocab.decode(x[0, :3]) == ["in", "the", "beginning"]


def test_default_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "lightning_ard" / "kjv"
    assert KJVDataModule().cache_dir == tmp_path / "lightning_ard" / "kjv"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "lightning_ard" / "kjv"


def test_kjv_datamodule_rejects_a_vocabulary_beyond_the_cached_one() -> None:
    with pytest.raises(ValueError, match=r"data.max_vocab_size must be null or an integer in \[3, 10000\].*got 20000"):
        KJVDataModule(max_vocab_size=20_000)
    with pytest.raises(ValueError, match="data.bptt must be a positive integer, got 0"):
        KJVDataModule(bptt=0)
    assert KJVDataModule(cache_dir="/x", max_vocab_size=None).hparams["cache_dir"] == "/x"


# --- the real text (needs bible-kjv) ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> tuple[KJVDataModule, list[Verse]]:
    if not HAS_BIBLE:
        pytest.skip("needs the `bible` command of Debian's bible-kjv (apt-get install -y bible-kjv; CI has it)")
    dm = KJVDataModule(cache_dir=tmp_path_factory.mktemp("kjv"), batch_size=20, eval_batch_size=10)
    dm.prepare_data()
    dm.setup()
    return dm, parse_bible(run_bible())


@needs_bible
def test_real_corpus_is_split_by_books(real: tuple[KJVDataModule, list[Verse]]) -> None:
    dm, verses = real
    assert {v.book for v in verses} == {name for _, name in BOOKS}
    lines = {s: p.read_text(encoding="utf-8").splitlines() for s, p in corpus_files(dm.cache_dir).items()}
    first = {
        "train": verses[0],
        "valid": next(v for v in verses if v.book in VALID_BOOKS),
        "test": next(v for v in verses if v.book in TEST_BOOKS),
    }
    assert (first["train"].book, first["valid"].book, first["test"].book) == ("Genesis", "Joshua", "Judges")
    for split in SPLITS:
        assert lines[split][0] == verse_line(first[split].text)  # no rare word in these first verses
    assert lines["train"][-1] == "the grace of our lord jesus christ be with you all . amen ."
    assert lines["valid"][0].startswith("now after the death of moses the servant of the lord")
    # Token shares close to PTB's (85.6 / 6.8 / 7.6 %).
    share = {s: len(dm.ids[s]) / sum(len(t) for t in dm.ids.values()) for s in SPLITS}
    ptb = {s: n / sum(PTB_TOKENS.values()) for s, n in PTB_TOKENS.items()}
    assert all(abs(share[s] - ptb[s]) < 0.005 for s in SPLITS), (share, ptb)


@needs_bible
def test_real_corpus_has_one_eos_per_verse_and_no_references(real: tuple[KJVDataModule, list[Verse]]) -> None:
    dm, verses = real
    assert dm.vocab is not None
    eos = dm.vocab.words.index(EOS)
    for split, books in (("valid", VALID_BOOKS), ("test", TEST_BOOKS)):
        assert int((dm.ids[split] == eos).sum()) == sum(v.book in books for v in verses)
    assert int((dm.ids["train"] == eos).sum()) == sum(v.book not in VALID_BOOKS + TEST_BOOKS for v in verses)
    for path in corpus_files(dm.cache_dir).values():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"[A-Z0-9()]", text.replace(UNK, ""))  # no upper case, verse numbers or references
        assert set(text.split()) - {UNK} <= {w for w in dm.vocab.words if re.fullmatch(r"[a-z'-]+|[,.;:?!]", w)}


@needs_bible
def test_real_corpus_vocabulary_is_10k_with_unk_from_training_text(real: tuple[KJVDataModule, list[Verse]]) -> None:
    dm, _ = real
    assert dm.vocab is not None and len(dm.vocab) == VOCAB_SIZE and dm.vocab.words[:2] == (UNK, EOS)
    train = corpus_files(dm.cache_dir)["train"].read_text(encoding="utf-8").split()
    assert len(set(train)) == VOCAB_SIZE - 1  # every word but <eos>, which the reader adds
    for split in SPLITS:
        assert int((dm.ids[split] == dm.vocab.unk_id).sum()) > 0  # rare words of every split are <unk>
    assert {"the", "lord", "god", ",", ".", "'s"} <= set(dm.vocab.words)


@needs_bible
def test_real_corpus_cache_is_reused_without_running_bible(
    real: tuple[KJVDataModule, list[Verse]], monkeypatch: pytest.MonkeyPatch
) -> None:
    dm, _ = real
    files = corpus_files(dm.cache_dir)
    stamps = {s: p.stat().st_mtime_ns for s, p in files.items()}

    def no_bible(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"bible was run again: {args}")

    monkeypatch.setattr(kjv_module.subprocess, "run", no_bible)
    again = KJVDataModule(cache_dir=dm.cache_dir, batch_size=20, eval_batch_size=10)
    again.prepare_data()
    again.setup()
    assert {s: p.stat().st_mtime_ns for s, p in files.items()} == stamps
    assert again.vocab == dm.vocab and all(again.ids[s].equal(dm.ids[s]) for s in SPLITS)
