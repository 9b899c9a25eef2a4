"""Lecture slides from the lessons: one reveal.js deck per notebook, viewable with no network.

    python -m minids.slides --out build/slides notebooks/*.ipynb      (what `make slides` runs)

nbconvert's reveal.js export, with every script and style sheet it would fetch from a CDN pointed at
local copies instead: reveal.js 4, MathJax 2 (the version nbconvert's template drives), require.js and
jQuery, installed once from the npm registry into OUT/vendor by `make slides` (see the Makefile). The
template's Mermaid import is dropped (the lessons have no Mermaid diagrams) and widgets, which need a
live kernel, are replaced by a one-line note. After writing, each deck is checked: no <script>,
<link> or module import may point outside the deck's folder. Course tooling: nbconvert is imported
inside `build`, never by the library.

Slide breaks come from each cell's `slideshow.slide_type` metadata, set in the lessons.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

VENDOR_FILES = {                               # what the decks load, relative to OUT/
    "reveal": "vendor/node_modules/reveal.js",
    "mathjax": "vendor/node_modules/mathjax/MathJax.js?config=TeX-AMS_CHTML-full,Safe",
    "require": "vendor/node_modules/requirejs/require.js",
    "jquery": "vendor/node_modules/jquery/dist/jquery.min.js",
    "widgets": "vendor/widgets-off.js",
}
THEME = "white"                                # its font ships with reveal.js ("simple" imports web fonts)
NPM_PACKAGES = ["reveal.js@4.6.1", "mathjax@2.7.9", "requirejs@2.3.7", "jquery@3.7.1"]

WIDGETS_OFF = """// Slides are static: a widget needs the running lesson. Say so where the widget would be.
document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').forEach(function (s) {
  var note = document.createElement('p');
  note.textContent = '(an interactive widget: open the lesson in JupyterLab to use it)';
  note.style.fontStyle = 'italic';
  s.parentNode.insertBefore(note, s);
});
"""

# nbconvert's reveal template, minus the Mermaid module it imports from a CDN
TEMPLATE = "{%- extends 'reveal/index.html.j2' -%}\n{% block html_head_js_mermaidjs %}{% endblock %}\n"

# anything a browser would fetch: src=, href= of <link>, and ES-module imports
_FETCHED = re.compile(r"""<script[^>]*\bsrc=["']([^"']+)|<link[^>]*\bhref=["']([^"']+)"""
                      r"""|\bimport\s[^;]*?from\s+["']([^"']+)""")


def missing_vendor(out: Path) -> list[str]:
    """Files of the local reveal.js/MathJax/require.js/jQuery copy that are not there yet."""
    need = ["vendor/node_modules/reveal.js/dist/reveal.js", "vendor/node_modules/reveal.js/plugin/notes/notes.js",
            "vendor/node_modules/mathjax/MathJax.js", "vendor/node_modules/requirejs/require.js",
            "vendor/node_modules/jquery/dist/jquery.min.js"]
    return [p for p in need if not (out / p).exists()]


def external_loads(html: str) -> list[str]:
    """Every URL in the page that a browser would fetch from outside the deck's own folder."""
    urls = [next(g for g in m.groups() if g) for m in _FETCHED.finditer(html)]
    return [u for u in urls if re.match(r"^(https?:)?//", u)]


def build(notebooks: list[Path], out: Path) -> list[Path]:
    """Write OUT/<stem>.slides.html for every notebook (and OUT/index.html); returns the decks."""
    import jinja2
    import nbformat
    from nbconvert import SlidesExporter
    from traitlets.config import Config

    missing = missing_vendor(out)
    if missing:
        raise SystemExit(f"the local reveal.js/MathJax copy is missing in {out}/vendor ({missing[0]}, ...): "
                         f"run `make slides`, which installs it once with "
                         f"`npm install --prefix {out}/vendor {' '.join(NPM_PACKAGES)}`")
    theme_css = (out / VENDOR_FILES["reveal"] / "dist" / "theme" / f"{THEME}.css").read_text(encoding="utf-8")
    remote = [u for u in re.findall(r"@import\s+url\(([^)]+)\)", theme_css) if re.match(r"^['\"]?(https?:)?//", u)]
    if remote:
        raise SystemExit(f"the reveal.js theme {THEME!r} imports {remote[0]} from the network")
    (out / VENDOR_FILES["widgets"]).write_text(WIDGETS_OFF)
    c = Config()
    c.SlidesExporter.reveal_url_prefix = VENDOR_FILES["reveal"]
    c.SlidesExporter.reveal_theme = THEME
    c.SlidesExporter.reveal_scroll = True          # a long slide scrolls instead of being cut off
    c.SlidesExporter.mathjax_url = VENDOR_FILES["mathjax"]
    c.SlidesExporter.require_js_url = VENDOR_FILES["require"]
    c.SlidesExporter.jquery_url = VENDOR_FILES["jquery"]
    c.SlidesExporter.widget_renderer_url = VENDOR_FILES["widgets"]
    c.SlidesExporter.exclude_input_prompt = True
    c.SlidesExporter.exclude_output_prompt = True
    exporter = SlidesExporter(config=c, extra_loaders=[jinja2.DictLoader({"minids_offline.j2": TEMPLATE})],
                              template_file="minids_offline.j2")
    decks = []
    for nb_path in notebooks:
        nb = nbformat.read(nb_path, as_version=4)
        html, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": nb_path.stem}})
        outside = external_loads(html)
        if outside:
            raise SystemExit(f"{nb_path.name}: the deck would load {outside[0]} from the network")
        deck = out / f"{nb_path.stem}.slides.html"
        deck.write_text(html, encoding="utf-8")
        decks.append(deck)
    items = "\n".join(f'<li><a href="{d.name}">{d.stem.removesuffix(".slides")}</a></li>' for d in decks)
    (out / "index.html").write_text(f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>minids slides"
                                    f"</title></head><body><h1>minids: lecture slides</h1>\n<ul>\n{items}\n</ul>"
                                    f"\n</body></html>\n", encoding="utf-8")
    return decks


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m minids.slides", description=__doc__.split("\n\n")[0])
    ap.add_argument("notebooks", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("build/slides"))
    args = ap.parse_args(argv)
    for deck in build(args.notebooks, args.out):
        print(deck)


if __name__ == "__main__":
    main()
