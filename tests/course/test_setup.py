"""The set-up files agree with each other: pyproject, environment.yml, Makefile, README, CI."""

import re
import tomllib

from nbutil import ROOT


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _env_pip():
    text = (ROOT / "environment.yml").read_text()
    return [ln.strip()[2:].strip() for ln in text.splitlines() if ln.strip().startswith("- ") and
            ln.startswith("      ")]


def test_environment_yml_installs_the_project_with_the_makefile_extras():
    make = (ROOT / "Makefile").read_text()
    extras_make = re.search(r"-e '\.\[([\w,]+)\]'", make).group(1)
    pip = _env_pip()
    assert f"-e .[{extras_make}]" in pip
    for extra in extras_make.split(","):
        assert extra in _pyproject()["project"]["optional-dependencies"]


def test_torch_pin_is_the_same_everywhere():
    make_pin = re.search(r"torch==([\d.]+)", (ROOT / "Makefile").read_text()).group(1)
    assert f"torch=={make_pin}" in _env_pip()
    assert f"torch=={make_pin}" in (ROOT / "README.md").read_text()
    dep = next(d for d in _pyproject()["project"]["dependencies"] if d.startswith("torch"))
    low = re.search(r">=([\d.]+)", dep).group(1)
    assert tuple(map(int, low.split("."))) <= tuple(map(int, make_pin.split(".")))


def test_environment_python_satisfies_requires_python():
    py = re.search(r"python=(3\.\d+)", (ROOT / "environment.yml").read_text()).group(1)
    low = re.search(r">=(3\.\d+)", _pyproject()["project"]["requires-python"]).group(1)
    assert tuple(map(int, py.split("."))) >= tuple(map(int, low.split(".")))


def test_readme_quick_start_is_the_two_make_commands_and_ci_runs_make_test():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [ln.split("#")[0].strip() for ln in block.strip().splitlines()]
    assert commands == ["make lab", "make test"]
    assert re.search(r"^make test$", (ROOT / ".ci/run").read_text(), re.MULTILINE)


def test_every_lesson_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        num = nb.name.split("_")[0]
        assert f"| {num} |" in readme, nb.name
