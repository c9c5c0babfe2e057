"""Generated blocks of a Markdown page, rewritten in place.

A block is the text between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``, each marker on a line of
its own. :func:`replace_blocks` swaps the text of named blocks and leaves every other byte of the page as it was, so
hand-written prose and generated tables live in one file and the tables can never drift from the code that made
them. Markers are HTML comments: they do not show on the rendered page.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_MARKER = re.compile(r"^<!-- (/?)generated:([A-Za-z0-9_-]+) -->$", re.M)


class MarkerError(ValueError):
    """A page's markers do not fit the blocks asked for (missing, unknown, unclosed or repeated)."""


def open_marker(name: str) -> str:
    """The line that opens block ``name``."""
    return f"<!-- generated:{name} -->"


def close_marker(name: str) -> str:
    """The line that closes block ``name``."""
    return f"<!-- /generated:{name} -->"


def _spans(text: str) -> dict[str, tuple[int, int]]:
    """Block name -> (start, end) of its body: from after the opening line to the start of the closing line."""
    spans: dict[str, tuple[int, int]] = {}
    current: tuple[str, int] | None = None
    for m in _MARKER.finditer(text):
        closing, name = m.group(1) == "/", m.group(2)
        if not closing:
            if current is not None:
                raise MarkerError(
                    f"block {current[0]!r} is not closed before {name!r} opens; add {close_marker(current[0])}"
                )
            if name in spans:
                raise MarkerError(f"block {name!r} appears twice on the page; keep one {open_marker(name)}")
            current = (name, min(m.end() + 1, len(text)))
        elif current is None or current[0] != name:
            raise MarkerError(f"{close_marker(name)} closes a block that is not open; add {open_marker(name)} above it")
        else:
            spans[name] = (current[1], m.start())
            current = None
    if current is not None:
        raise MarkerError(f"block {current[0]!r} is never closed; add {close_marker(current[0])} after it")
    return spans


def block_names(text: str) -> list[str]:
    """The names of the page's blocks, in page order."""
    spans = _spans(text)
    return sorted(spans, key=lambda name: spans[name][0])


def replace_blocks(text: str, blocks: Mapping[str, str], strict: bool = True) -> str:
    """``text`` with the body of every block in ``blocks`` replaced by its new text (a final newline added).

    Raises:
        MarkerError: a block in ``blocks`` has no markers on the page; with ``strict``, the page has a block that
            ``blocks`` does not name (a typo on either side would otherwise leave a stale table); or the markers
            are malformed.
    """
    spans = _spans(text)
    missing = sorted(set(blocks) - set(spans))
    if missing:
        hint = ", ".join(f"{open_marker(n)} ... {close_marker(n)}" for n in missing)
        raise MarkerError(f"no block named {missing} on the page; add {hint}")
    unknown = sorted(set(spans) - set(blocks))
    if strict and unknown:
        raise MarkerError(f"the page has blocks {unknown} that nothing renders; remove them or add their renderer")
    out, pos = [], 0
    for name, (start, end) in sorted(spans.items(), key=lambda item: item[1][0]):
        if name not in blocks:
            continue
        body = blocks[name].rstrip("\n") + "\n"
        out += [text[pos:start], body]
        pos = end
    out.append(text[pos:])
    return "".join(out)
