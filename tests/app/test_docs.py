"""The docs site builds with ``mkdocs build --strict``; README's Quickstart commands are Makefile targets."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_mkdocs_builds_strict(tmp_path) -> None:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for page in ("index.html", "method/index.html", "user_guide/index.html", "api/index.html", "results/index.html"):
        assert (tmp_path / "site" / page).is_file(), page
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("lightning_ard.ApproximateDropout", "lightning_ard.ARDController", "search_distribution"):
        assert name in api


def _readme_quickstart_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = re.search(r"^## Quickstart\n(.*?)(?=^## )", text, flags=re.S | re.M)
    assert section, "README.md has no '## Quickstart' section"
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", section.group(1), flags=re.S)
    assert block, "README's Quickstart has no code block"
    return [line.split("#", 1)[0].strip() for line in block.group(1).splitlines() if line.split("#", 1)[0].strip()]


def test_readme_quickstart_commands_are_makefile_targets() -> None:
    commands = _readme_quickstart_commands()
    assert commands
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", makefile, flags=re.M))
    for command in commands:
        words = command.split()
        assert words[0] == "make", f"Quickstart command {command!r} is not a make command"
        for target in words[1:] or ["all"]:
            assert target in targets, f"Quickstart runs `make {target}` but the Makefile has no target {target!r}"


def test_docs_quickstart_matches_readme() -> None:
    index = (ROOT / "docs" / "index.md").read_text()
    for command in _readme_quickstart_commands():
        assert command in index, f"docs/index.md does not show the Quickstart command {command!r}"
