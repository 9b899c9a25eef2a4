"""conftest.py's portability switch: with MINIDS_NB_CPU_CAPS each notebook's kernel really runs under the
CPU kernel path its position names (checked by torch itself), and a failure's report names that path."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _notebook(path: Path, shown: str) -> None:
    """A one-cell notebook whose stored output claims the kernel path `shown`."""
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("import torch\nprint(torch.backends.cpu.get_cpu_capability())")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=shown + "\n")]
    cell.execution_count = 1
    nb.cells = [cell]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def _run(folder: Path, **env) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "PYTEST_XDIST_WORKER")}
    e.update(env)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-p", "no:xdist",
                           "--nbval", "--nbval-current-env", "nbs"],
                          cwd=folder, env=e, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_each_notebook_runs_under_the_kernel_path_of_its_position(tmp_path):
    shutil.copy(ROOT / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "nbs").mkdir()
    _notebook(tmp_path / "nbs" / "00_first.ipynb", "AVX2")       # position 0 runs under avx2: passes
    _notebook(tmp_path / "nbs" / "01_second.ipynb", "AVX2")      # position 1 runs under default: fails
    r = _run(tmp_path, MINIDS_NB_CPU_CAPS="avx2 default")
    assert r.returncode != 0 and "1 failed, 1 passed" in r.stdout, r.stdout + r.stderr
    assert "FAILED nbs/01_second.ipynb" in r.stdout and "DEFAULT" in r.stdout
    assert "ran under ATEN_CPU_CAPABILITY=default" in r.stdout           # the report names the path
    assert "make test-notebooks NB=nbs/01_second.ipynb" in r.stdout      # and how to reproduce it
