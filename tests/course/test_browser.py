"""The course in a real browser: JupyterLab served on localhost, driven by headless Chromium.

What a learner sees is not what nbval sees: nbval compares stored outputs, but a figure, a widget
or a progress bar can still fail to *render* in JupyterLab (a missing lab extension, a comm that
never answers). These tests open notebooks in JupyterLab exactly as a learner would, run all
cells, and look at the page: a matplotlib <img>, a slider whose change updates a dependent widget
through the kernel, a tqdm progress widget, and an exercise's check cell turning from ❌ "not
implemented yet" to ✅ once a correct function is typed in.

Needs Debian's `chromium` (`apt-get install chromium`) and the `playwright` Python package (the
[dev] extra). The system browser is used; nothing is ever downloaded (never `playwright
install`). Skipped, with the reason, when either is missing. Screenshots go to a temporary folder
(and also to $MINIDS_SCREENSHOTS when set: that is how docs/screenshots/ was made).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from nbutil import ROOT

CHROMIUM = Path(os.environ.get("MINIDS_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"]
TOKEN = "minids-browser-test"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason=f"no Chromium at {CHROMIUM}: `apt-get install chromium` (Debian) to run the "
                              "browser tests, or set MINIDS_CHROMIUM to a Chromium binary"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None,
                       reason="the `playwright` Python package is missing: `pip install -e '.[dev]'` "
                              "(never `playwright install`: the system Chromium is used)"),
]

# A purpose-made lesson: the three kinds of rich output the lessons use, in seconds instead of the
# minutes a real lesson trains for. The callback is a plain function, as in the lessons.
DEMO_CELLS = [
    """import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

from minids.config import TrainConfig, get_preset
from minids.generate import filtered_probs
from minids.train import train

torch.set_num_threads(1)   # one thread: deterministic outputs, and tiny ops run faster
_ = torch.manual_seed(0)""",
    """logits = torch.randn(8, 20, generator=torch.Generator().manual_seed(0)) * 2

def entropy(temperature):
    p = filtered_probs(logits, temperature)
    return -(p * p.clamp_min(1e-12).log()).sum(-1).mean().item()

temps = [0.1 * i for i in range(1, 31)]
fig, ax = plt.subplots(figsize=(5, 2.4))
ax.plot(temps, [entropy(t) for t in temps])
ax.set_xlabel("temperature"); ax.set_ylabel("entropy (nats)"); ax.set_title("sampling entropy")
plt.show()""",
    """def describe(t):
    return f"entropy at temperature {t:.2f}: {entropy(t):.3f} nats"

slider = widgets.FloatSlider(value=0.8, min=0.1, max=2.0, step=0.1, description="temperature",
                             style={"description_width": "initial"})
label = widgets.HTML(value=describe(0.8))
slider.observe(lambda change: setattr(label, "value", describe(change["new"])), names="value")
widgets.VBox([slider, label])""",
    """tc = TrainConfig(batch_size=4, block_size=32, max_iters=20, warmup_iters=2, eval_interval=20,
                 eval_iters=2, num_threads=1, seed=0)
result = train(get_preset("baseline"), tc)      # minids' own loop and its tqdm.auto bar
print("ALL CELLS RAN; val loss", round(result.final_val_loss, 1))""",
]

RMS_NORM_SOLUTION = '''def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x: (..., d), weight: (d,) -> (..., d)"""
    xf = x.double()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.double()).to(x.dtype)
'''


def _entropy_text(t: float) -> str:
    """What the demo's label shows for temperature t, computed here independently of the browser."""
    import torch

    from minids.generate import filtered_probs

    logits = torch.randn(8, 20, generator=torch.Generator().manual_seed(0)) * 2
    p = filtered_probs(logits, t)
    return f"entropy at temperature {t:.2f}: {-(p * p.clamp_min(1e-12).log()).sum(-1).mean().item():.3f} nats"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on a free localhost port with a known token, serving a temporary folder that
    holds copies of the notebooks; every Jupyter/IPython setting lives in a temporary folder."""
    base = tmp_path_factory.mktemp("lab")
    root, home = base / "root", base / "jupyter"
    root.mkdir()
    demo = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in DEMO_CELLS])
    demo.cells.insert(0, nbformat.v4.new_markdown_cell("# Browser check: figure, widget, progress bar"))
    demo.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(demo, root / "demo.ipynb")
    shutil.copy(ROOT / "exercises" / "01_gpt_baseline.ipynb", root / "exercise01.ipynb")
    env = dict(os.environ, OMP_NUM_THREADS="1", JUPYTER_CONFIG_DIR=str(home / "config"),
               JUPYTER_RUNTIME_DIR=str(home / "runtime"), JUPYTER_DATA_DIR=str(home / "data"),
               IPYTHONDIR=str(home / "ipython"), JUPYTER_PLATFORM_DIRS="1")
    env.pop("JUPYTER_TOKEN", None)
    # no "official Jupyter news?" toast over the notebook, and no request for it
    news = home / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text('{"fetchNews": "false", "checkForUpdates": false}')
    port = _free_port()
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}",
           f"--LabApp.user_settings_dir={home / 'settings'}", f"--LabApp.workspaces_dir={home / 'workspaces'}",
           "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")                     # JupyterLab refuses root otherwise
    log = open(base / "jupyter.log", "w")
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("JupyterLab did not start:\n" + (base / "jupyter.log").read_text()[-3000:])
            time.sleep(0.3)
        yield {"url": url, "root": root, "shots": base / "screenshots"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        try:
            yield b
        finally:
            b.close()


def _open(browser, lab, name):
    """A fresh page with `name` open in JupyterLab (workspace reset) and its kernel idle."""
    page = browser.new_page(viewport={"width": 1100, "height": 820})
    page.set_default_timeout(60_000)
    page.goto(f"{lab['url']}/lab/tree/{name}?reset&token={TOKEN}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", state="visible")
    page.wait_for_selector("#jp-main-statusbar >> text=Idle", timeout=60_000)
    return page


def _run_all(page):
    page.click(".lm-MenuBar-itemLabel:text-is('Run')")
    page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")


def _hide_sidebar(page):
    """Collapse the file browser (click its open tab), so the notebook gets the width."""
    page.click(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current")


def _shot(page, lab, name):
    lab["shots"].mkdir(exist_ok=True)
    path = lab["shots"] / name
    page.screenshot(path=str(path))
    if os.environ.get("MINIDS_SCREENSHOTS"):
        Path(os.environ["MINIDS_SCREENSHOTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(os.environ["MINIDS_SCREENSHOTS"]) / name)
    assert path.stat().st_size > 10_000                # a real page, not a blank one
    return path


def test_lesson_outputs_render_and_widgets_respond(browser, lab):
    page = _open(browser, lab, "demo.ipynb")
    _hide_sidebar(page)
    _run_all(page)
    page.wait_for_selector(".jp-OutputArea-output >> text=ALL CELLS RAN", timeout=90_000)

    # the matplotlib figure: an <img> in an output area, decoded by the browser
    img = page.locator(".jp-OutputArea-output img").first
    img.wait_for()
    assert img.evaluate("i => i.complete && i.naturalWidth") > 200

    # the tqdm bar of minids.train: an ipywidgets progress bar that reached the end
    bar = page.locator(".jp-OutputArea-output .widget-hbox", has=page.locator(".widget-hprogress")).first
    bar.wait_for()
    assert "20/20" in bar.inner_text() and "train" in bar.inner_text()

    # the slider: its label is computed in the kernel; moving the slider must update it
    label = page.locator(".jp-OutputArea-output .widget-html-content", has_text="entropy at temperature")
    assert label.inner_text().strip() == _entropy_text(0.8)
    handle = page.locator(".jp-OutputArea-output .widget-slider .noUi-handle").first
    handle.focus()
    handle.press("ArrowRight")
    handle.press("ArrowRight")
    page.wait_for_selector(f".widget-html-content >> text={_entropy_text(1.0)}", timeout=20_000)
    assert page.locator(".widget-readout").first.inner_text().strip() == "1.00"
    page.locator(".jp-OutputArea-output img").first.scroll_into_view_if_needed()
    _shot(page, lab, "lesson_in_jupyterlab.png")
    page.close()


def test_exercise_check_turns_from_not_implemented_to_passed(browser, lab):
    page = _open(browser, lab, "exercise01.ipynb")
    _hide_sidebar(page)
    _run_all(page)
    # the stub: the first check cell names the problem (and the run stops at it, as Run All does)
    fail = page.locator(".jp-OutputArea-output", has_text="❌ rms_norm: not implemented yet")
    fail.first.wait_for(timeout=60_000)
    assert "replace `raise NotImplementedError` with your code" in fail.first.inner_text()

    fail.first.scroll_into_view_if_needed()
    _shot(page, lab, "exercise_stub_in_jupyterlab.png")

    # type a correct function into the task cell, as a learner does, and run it and its check
    cell = page.locator(".jp-Notebook .jp-CodeCell", has_text="def rms_norm").first
    cell.locator(".cm-content").click()
    page.keyboard.press("Control+a")
    page.keyboard.insert_text(RMS_NORM_SOLUTION)       # plain text: no auto-indent, no auto-brackets
    page.keyboard.press("Shift+Enter")                 # runs it, moves to the check cell
    page.keyboard.press("Shift+Enter")                 # runs the check
    ok = page.locator(".jp-OutputArea-output", has_text="✅ rms_norm: passed 6/6 tests")
    ok.first.wait_for(timeout=30_000)
    assert "❌ rms_norm" not in page.locator(".jp-Notebook").inner_text()
    # and on through task 2, still a stub: its check names the problem
    for _ in range(3):                                 # the task's markdown, the stub, its check
        page.keyboard.press("Shift+Enter")
    page.locator(".jp-OutputArea-output", has_text="❌ causal_attention: not implemented yet").first.wait_for()
    cell.evaluate("e => e.scrollIntoView({block: 'start'})")
    _shot(page, lab, "exercise_in_jupyterlab.png")
    page.close()
