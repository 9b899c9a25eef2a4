"""The grader survives files that are not notebooks at all (good, broken, hanging and renamed
notebooks are in test_exercise_machinery.py)."""

import csv

import nbformat
import pytest
from nbutil import ROOT

from minids.checks.grade import grade, grade_notebook

NOT_NOTEBOOKS = {
    "garbage": b"not json {",
    "empty": b"",
    "empty_object": b"{}",                                          # JSON, but not a notebook
    "json_list": b"[1, 2]",
    "bad_cells": b'{"cells": 5, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}',
    "binary": bytes(range(256)),
}


@pytest.mark.parametrize("name", sorted(NOT_NOTEBOOKS))
def test_unreadable_file_gets_a_row_with_a_reason(name, tmp_path):
    path = tmp_path / f"{name}.ipynb"
    path.write_bytes(NOT_NOTEBOOKS[name])
    row = grade_notebook(path, timeout=5)
    assert row["status"].startswith("unreadable: ") and row["score"] == 0 and row["learner"] == name
    assert path.read_bytes() == NOT_NOTEBOOKS[name]                  # never modified


def test_folder_of_unreadable_files_still_writes_the_csv(tmp_path):
    folder = tmp_path / "submissions"
    for name, data in NOT_NOTEBOOKS.items():
        (folder / name).mkdir(parents=True)
        (folder / name / "01_gpt_baseline.ipynb").write_bytes(data)
    (folder / "notes.txt").write_text("not a notebook, not graded")
    (folder / ".ipynb_checkpoints").mkdir()
    (folder / ".ipynb_checkpoints" / "x-checkpoint.ipynb").write_text("{}")
    out = tmp_path / "grades.csv"
    rows = grade([folder], timeout=5, csv_path=out, echo=False)
    assert sorted(r["learner"] for r in rows) == sorted(NOT_NOTEBOOKS)
    with open(out) as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(NOT_NOTEBOOKS)
    assert all(r["status"].startswith("unreadable") and r["score"] == "0" for r in table)


@pytest.mark.slow
def test_unreadable_notebook_scores_zero_on_its_chapters_tasks(tmp_path, capsys):
    """Beside a readable submission of the same notebook, an unreadable one gets a 0 per task
    (not blanks) and the same maximum, so the CSV's columns add up."""
    folder = tmp_path / "submissions"
    (folder / "alice").mkdir(parents=True)
    (folder / "eve").mkdir()
    nbformat.write(nbformat.read(ROOT / "solutions/01_gpt_baseline.ipynb", as_version=4),
                   folder / "alice" / "01_gpt_baseline.ipynb")
    (folder / "eve" / "01_gpt_baseline.ipynb").write_text('{"cells": [')   # cut off while saving
    out = tmp_path / "grades.csv"
    rows = {r["learner"]: r for r in grade([folder], timeout=30, csv_path=out)}
    n = len(rows["alice"]["tasks"])                                  # chapter 01's tasks (9)
    assert rows["alice"]["score"] == rows["alice"]["max"] == n >= 4
    assert rows["eve"]["status"].startswith("unreadable") and rows["eve"]["max"] == n
    assert rows["eve"]["tasks"] == dict.fromkeys(rows["alice"]["tasks"], 0)
    with open(out) as f:
        eve = next(r for r in csv.DictReader(f) if r["learner"] == "eve")
    assert eve["rms_norm"] == "0" and eve["max"] == str(n) and eve["chapter"] == "01"
    assert "unreadable" in capsys.readouterr().out                   # the printed table says why
