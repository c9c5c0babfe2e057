"""The product speaks of the product only: no words of how it was developed.

README.md, mkdocs.yml, docs/ (every text file), lightning_ard/ and tests/ (Python and YAML) must not name work
sessions ("the fourth session", "this session's CPU"), issue numbers ("issue 12", "(issue 14 ...)", "#12") or machine
nicknames ("Xeon A", "AMD 6", "amd6", "xeon4", "the faster Xeon"); nor may a file or folder under docs/results/ be
named after a nickname. A CPU described by its model and properties ("a 2-core AMD EPYC", "an Intel Xeon, 2 cores",
"AMD EPYC 7763") is fine, and so are technical uses of "session": pytest's ``scope="session"``, a process session
(``start_new_session``, "session leader") or ``requests.Session``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
THIS_FILE = Path(__file__).resolve()

# Files that may contain the patterns because they define them.
ALLOWED_FILES = {THIS_FILE}

# Spans blanked out before the patterns run: technical uses of the word "session".
TECHNICAL_SESSION = re.compile(
    r"""scope\s*=\s*["']session["']"""  # pytest fixture scope
    r"|\.Session\b"  # a class such as requests.Session
    r"|\bprocess\s+sessions?\b"  # POSIX process session
    r"|\bsessions?\s+leader\b",
    re.IGNORECASE,
)

# (pattern, what it forbids). Matched line by line after TECHNICAL_SESSION is blanked out.
FORBIDDEN: list[tuple[re.Pattern[str], str]] = [
    # any word "session(s)" in prose, e.g. "fourth session", "this session's CPU", "the earlier session's runs"
    (re.compile(r"\bsessions?\b", re.IGNORECASE), "work session"),
    # issue numbers: "issue 12", "Issue 14's check", "issues 12 and 13", "issue #12"
    (re.compile(r"\bissues?\s*#?\s*\d+", re.IGNORECASE), "issue number"),
    # "(issue 14 items 3-5)", "(issue 12)"
    (re.compile(r"\(\s*issues?\b", re.IGNORECASE), "issue reference"),
    # "#12" as a reference (not a Markdown heading, an URL anchor, a colour "#336699" or "#333" in quotes)
    (re.compile(r"(?<![\w&#\"'/=])#\d{1,4}\b"), "issue/PR number"),
    # "Xeon A", "AMD 6", "EPYC B": a vendor name followed by a lone capital letter or digit (case-sensitive)
    (re.compile(r"\b(?:Xeon|XEON|xeon|AMD|amd|Amd|EPYC|Epyc|epyc|Intel|intel)\s+[A-Z0-9]\b"), "machine nickname"),
    # "amd6", "xeon4", "epyc5"
    (re.compile(r"\b(?:amd|xeon|epyc|intel)\d{1,2}\b", re.IGNORECASE), "machine nickname"),
    # "the faster Xeon" used as a name
    (re.compile(r"\bthe\s+(?:faster|slower)\s+(?:Xeon|AMD|EPYC|Intel)\b", re.IGNORECASE), "machine nickname"),
]

# File and folder names under docs/results/: nicknames such as amd5/, xeon4/, bench_amd6.json.
FORBIDDEN_PATH = re.compile(r"(?<![a-z])(?:amd|xeon|epyc|intel)[-_]?\d{1,2}(?![0-9a-z])", re.IGNORECASE)

TEXT_SUFFIXES_CODE = {".py", ".yaml", ".yml"}


def scan_text(text: str) -> list[tuple[int, str, str]]:
    """(line number, offending phrase, kind) for every forbidden match in ``text``."""
    hits = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        clean = TECHNICAL_SESSION.sub(lambda m: " " * len(m.group(0)), line)
        for pattern, kind in FORBIDDEN:
            for m in pattern.finditer(clean):
                hits.append((lineno, m.group(0), kind))
    return hits


def scan_path(rel: str) -> list[str]:
    """The nickname parts of a path relative to the repository root (checked under docs/results/ only)."""
    if not rel.startswith("docs/results/"):
        return []
    return [m.group(0) for m in FORBIDDEN_PATH.finditer(rel)]


def _read_text(path: Path) -> str | None:
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None  # binary (a .png and the like)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def product_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "mkdocs.yml"]
    files += [p for p in (ROOT / "docs").rglob("*") if p.is_file()]
    for folder in ("lightning_ard", "tests"):
        files += [p for p in (ROOT / folder).rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES_CODE]
    return sorted(p for p in files if p.exists() and "__pycache__" not in p.parts)


def test_product_has_no_development_words() -> None:
    problems = []
    for path in product_files():
        rel = path.relative_to(ROOT).as_posix()
        problems += [f"{rel}: path names a machine nickname {part!r}" for part in scan_path(rel)]
        if path.resolve() in ALLOWED_FILES:
            continue
        text = _read_text(path)
        if text is None:
            continue
        problems += [f"{rel}:{lineno}: {kind} {phrase!r}" for lineno, phrase, kind in scan_text(text)]
    assert not problems, "words of the development process in the product:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "text",
    [
        "Six seeds give +0.09, and the earlier session's three gave -0.24.",
        "#### Groups that follow the batch (2026-12-02, fourth session)",
        "This session's CPU, an AMD EPYC",
        "No GPU was lent to this project's sessions so far",
        "Where the goals of issue 12 stand",
        "Issue 14's check, 2026-12-01",
        "the fix (issue 14 items 3-5) holds",
        "as asked in #12.",
        '"Xeon A" is the Intel Xeon',
        "| goal | Xeon B | AMD 3 |",
        "On AMD 6 the first run",
        "see docs/results/defaults/amd6/recheck_sgd.md",
        "the xeon4 run",
        "measured on the faster Xeon",
    ],
)
def test_scanner_catches_planted_words(text: str) -> None:
    assert scan_text(text), text


@pytest.mark.parametrize(
    "text",
    [
        '@pytest.fixture(scope="session")',
        "@pytest.fixture(scope='session')",
        "proc = subprocess.Popen(cmd, start_new_session=True)  # its own process session",
        "s = requests.Session()",
        "measured on a 2-core AMD EPYC (family 25 model 17), 1 thread",
        "an Intel Xeon, 2 cores, 480 MiB L3; AMD EPYC 7763",
        "The defaults on an AMD EPYC a third time",
        "#### Groups that follow the batch (2026-12-02)",
        "[Results](results.md#groups-that-follow-the-batch-2026-12-02)",
        'plt.plot(x, y, color="#336699"); c = "#333"',
        "for i in range(4):  # 4 groups, #rows kept",
        "the issue of a slow first step",
    ],
)
def test_scanner_passes_clean_text(text: str) -> None:
    assert not scan_text(text), scan_text(text)


def test_path_scanner() -> None:
    assert scan_path("docs/results/defaults/amd6/run2/bench.md") == ["amd6"]
    assert scan_path("docs/results/lstm_kjv/xeon4/bench.json") == ["xeon4"]
    assert scan_path("docs/results/defaults/bench_amd_5.json") == ["amd_5"]
    assert scan_path("docs/results/defaults/epyc-2core-set3/run2/bench.md") == []
    assert scan_path("docs/results/defaults/amd/bench_cpu_defaults_amd.json") == []
    assert scan_path("tests/amd6.py") == []
