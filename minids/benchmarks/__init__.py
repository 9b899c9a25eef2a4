"""Benchmarks: `python -m minids bench NAME [options]` runs `minids.benchmarks.NAME.main(argv)`,
which prints a table. Each one measures what it compares side by side in one run."""

import importlib
import pkgutil


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def run(name: str, argv: list[str]) -> None:
    if name not in available():
        raise SystemExit(f"unknown benchmark {name!r}; available: {', '.join(available())}")
    importlib.import_module(f"{__name__}.{name}").main(argv)
