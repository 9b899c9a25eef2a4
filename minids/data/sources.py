"""Where documents come from: an online data set of Hugging Face `datasets` by name (`ONLINE`:
TinyStories, a FineWeb-Edu sample; streamed, so only the documents read are downloaded) or local
files (.jsonl/.json, .txt, .parquet; a file, a folder of them or a glob), which `datasets` reads
offline (without it: jsonl and txt in plain Python). Kept apart from minids.data.prepare, which
tokenizes what these yield: every error here names the file or data set, the row and the field.
"""

from __future__ import annotations

import glob
import importlib.util
import itertools
import json
from pathlib import Path

ONLINE = {  # name -> (hub id, config, text field)
    "tinystories": ("roneneldan/TinyStories", None, "text"),
    "fineweb-edu": ("HuggingFaceFW/fineweb-edu", "sample-10BT", "text"),
}
_BUILDERS = {".jsonl": "json", ".json": "json", ".txt": "text", ".parquet": "parquet"}


def _local_files(source: str) -> list[Path]:
    """A file, a folder (its files of one known kind) or a glob -> sorted files; [] if none."""
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in _BUILDERS and p.is_file())
        if not files:
            raise ValueError(f"source={source!r} is a folder without {'/'.join(_BUILDERS)} files")
    elif any(ch in source for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(source) if Path(p).suffix in _BUILDERS)
    else:
        files = [path] if path.suffix in _BUILDERS and path.is_file() else []
    kinds = {_BUILDERS[p.suffix] for p in files}
    if len(kinds) > 1:
        raise ValueError(f"source={source!r} mixes file kinds ({', '.join(sorted(kinds))}): prepare one kind at a time")
    return files


def _plain_rows(path: Path):
    """Rows of a .jsonl/.json/.txt file without `datasets` (a .txt file is one document)."""
    if _BUILDERS[path.suffix] == "text":
        yield {"text": path.read_text(encoding="utf-8")}
        return
    if _BUILDERS[path.suffix] != "json":
        raise RuntimeError(f"reading {path} ({path.suffix}) needs `pip install datasets`")
    with open(path, encoding="utf-8") as f:
        first = f.read(1)
        f.seek(0)
        if first == "[":
            try:
                yield from json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON ({e})") from None
            return
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}, line {n}: not valid JSON ({e})") from None


def iter_documents(source: str, text_field: str = "text", max_docs: int | None = None,
                   use_datasets: bool | None = None):
    """Yield documents (str) from an online data set name (see ONLINE) or local file(s). Errors
    name the file (or data set) and the field."""
    if use_datasets is None:
        use_datasets = importlib.util.find_spec("datasets") is not None
    if source in ONLINE:
        if not use_datasets:
            raise RuntimeError(f"the {source!r} data set needs `pip install datasets` and a network")
        import datasets
        hub, config, text_field = ONLINE[source]
        rows = datasets.load_dataset(hub, config, split="train", streaming=True)
        where = f"data set {hub}" + (f" ({config})" if config else "")
    else:
        files = _local_files(source)
        if not files:
            raise ValueError(f"source={source!r} must be one of {sorted(ONLINE)}, 'shakespeare', or an existing "
                             f"{'/'.join(_BUILDERS)} file, a folder of them or a glob")
        builder = _BUILDERS[files[0].suffix]
        where = str(files[0]) if len(files) == 1 else f"{len(files)} files {files[0]} ... {files[-1]}"
        if use_datasets:
            import datasets
            kw = {"sample_by": "document"} if builder == "text" else {}
            rows = datasets.load_dataset(builder, data_files=[str(p) for p in files], split="train",
                                         streaming=True, **kw)
        else:
            rows = itertools.chain.from_iterable(_plain_rows(p) for p in files)
    for n, row in enumerate(itertools.islice(rows, max_docs)):
        if not isinstance(row, dict):
            raise ValueError(f"{where}, row {n}: expected an object with a {text_field!r} field, got "
                             f"{type(row).__name__}")
        if text_field not in row:
            raise ValueError(f"text_field={text_field!r} is not a column of {where} (row {n}); columns: "
                             f"{sorted(row)}")
        text = row[text_field]
        if not isinstance(text, str):
            raise ValueError(f"{where}, row {n}: field {text_field!r} holds {type(text).__name__}, not text")
        yield text
