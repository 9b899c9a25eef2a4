"""The grader's inputs and outputs: files that are not notebooks, bad command-line arguments, how a
submission's chapter is recognised, where the tasks come from, the CSV. Nothing here starts a
notebook (fast); the attacks are in test_grading_attacks.py and test_grading_isolation.py, the
remote proxy in test_grading_remote.py, the whole course in test_grading_course.py."""

import csv
import os

import pytest
from nbutil import ROOT

from minids.__main__ import main
from minids.checks.build import check_calls, course_tasks
from minids.checks.grade import detect_chapter, grade, grade_notebook, load_course, write_csv

NOT_NOTEBOOKS = {
    "garbage": b"not json {",
    "empty": b"",
    "empty_object": b"{}",                                          # JSON, but not a notebook
    "json_list": b"[1, 2]",
    "bad_cells": b'{"cells": 5, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}',
    "binary": bytes(range(256)),
    "deep": b"[" * 100000,
}
COURSE = load_course(ROOT / "solutions")
CH01 = [t["task"] for t in COURSE["01"]["tasks"]]


@pytest.mark.parametrize("name", sorted(NOT_NOTEBOOKS))
def test_unreadable_file_gets_a_row_with_a_reason(name, tmp_path):
    path = tmp_path / f"{name}.ipynb"
    path.write_bytes(NOT_NOTEBOOKS[name])
    row = grade_notebook(path, timeout=5, course=COURSE)
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


def test_unreadable_notebook_scores_zero_on_its_chapters_tasks(tmp_path, capsys):
    """An unreadable submission of chapter 01 gets a 0 per task of the course's chapter 01 (not
    blanks) and the chapter's maximum, so the CSV's columns add up."""
    folder = tmp_path / "submissions"
    (folder / "eve").mkdir(parents=True)
    (folder / "eve" / "01_gpt_baseline.ipynb").write_text('{"cells": [')   # cut off while saving
    out = tmp_path / "grades.csv"
    rows = {r["learner"]: r for r in grade([folder], timeout=30, csv_path=out)}
    assert rows["eve"]["status"].startswith("unreadable") and rows["eve"]["max"] == len(CH01) >= 4
    assert rows["eve"]["tasks"] == dict.fromkeys(CH01, 0)
    with open(out) as f:
        eve = next(r for r in csv.DictReader(f) if r["learner"] == "eve")
    assert eve["rms_norm"] == "0" and eve["max"] == str(len(CH01)) and eve["chapter"] == "01"
    assert "unreadable" in capsys.readouterr().out                   # the printed table says why


def test_a_symbolic_link_in_a_submission_folder_is_not_followed(tmp_path):
    folder = tmp_path / "submissions"
    (folder / "mallory").mkdir(parents=True)
    secret = tmp_path / "instructor_only.ipynb"
    secret.write_text("{}")
    os.symlink(secret, folder / "mallory" / "01_gpt_baseline.ipynb")
    (row,) = grade([folder], timeout=5, echo=False)
    assert row["status"] == "unreadable: a symbolic link" and row["max"] == len(CH01)


# --- command line ---------------------------------------------------------------------------------

def _cli_error(args, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(["grade", *args])
    assert e.value.code not in (0, None)
    out = capsys.readouterr()
    assert "learner" not in out.out                                  # refused before grading anything
    return str(e.value.code) + out.err


@pytest.mark.parametrize("value", ["0", "-5"])
def test_timeout_must_be_positive(value, tmp_path, capsys):
    (tmp_path / "a.ipynb").write_text("{}")
    assert "--timeout must be a positive number" in _cli_error(["--timeout", value, str(tmp_path)], capsys)


@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf"), True, "10"])
def test_grade_refuses_a_timeout_that_is_not_a_positive_number(value, tmp_path):
    with pytest.raises(ValueError, match="timeout"):
        grade([tmp_path], timeout=value, echo=False)


def test_csv_naming_a_folder_is_refused_before_grading(tmp_path, capsys):
    (tmp_path / "a.ipynb").write_text("{}")
    assert "is a folder" in _cli_error([str(tmp_path), "--csv", str(tmp_path)], capsys)


def test_csv_in_a_missing_folder_is_refused_before_grading(tmp_path, capsys):
    (tmp_path / "a.ipynb").write_text("{}")
    assert "no folder" in _cli_error([str(tmp_path), "--csv", str(tmp_path / "nope" / "g.csv")], capsys)


def test_a_missing_path_exits_non_zero_with_one_line(tmp_path, capsys):
    msg = _cli_error([str(tmp_path / "no_such_folder")], capsys)
    assert "no such file or folder" in msg and "Traceback" not in msg


# --- the course, not the submission -------------------------------------------------------------

def test_tasks_and_their_arguments_come_from_the_solutions():
    course = course_tasks(ROOT / "solutions")
    assert set(course) >= {"01", "02", "03", "04", "05", "07"}
    for chapter, info in course.items():
        assert info["notebook"].startswith(chapter) and len(info["tasks"]) >= 3
        for t in info["tasks"]:
            assert t["args"] and all(a.strip() for a in t["args"])
    assert COURSE["01"]["checks"]["rms_norm"].__name__ == "check_rms_norm"
    assert all("minids.checks" in f for f in COURSE["01"]["forbidden"].values())


def test_check_calls_are_read_from_the_syntax_tree():
    src = ("check_a(f)  # done\ncheck_b(g);\ncheck_c ( h )  \ncheck_d(\n    k,\n    n=3,\n)\n"
           "%time x = 1\n!ls\nprint('check_e(z)')\nif True:\n    check_f(m)")
    assert check_calls(src) == [("a", ["f"], []), ("b", ["g"], []), ("c", ["h"], []), ("d", ["k"], [("n", "3")]),
                                ("f", ["m"], [])]
    assert check_calls("   check_g(p)   ") == [("g", ["p"], [])]              # IPython dedents such a cell
    assert check_calls("%%bash\ncheck_x(y)") == [] and check_calls("def broken(:\ncheck_x(y)") == []


@pytest.mark.parametrize("name, meta, cells, chapter", [
    ("01_gpt_baseline.ipynb", {}, [], "01"),
    ("01_gpt_baseline (1).ipynb", {"minids": "03"}, [], "01"),                 # the file name first
    ("1-lab.ipynb", {}, [], "01"),
    ("lab.ipynb", {"minids": {"chapter": "02"}}, [], "02"),                    # renamed: metadata
    ("lab.ipynb", {"minids": {"chapter": 2}}, [], "02"),
    ("lab.ipynb", {"minids": {"chapter": "2 "}}, [], "02"),
    ("lab.ipynb", {"minids": "01"}, [], None),                                  # odd types never raise
    ("lab.ipynb", {"minids": {"chapter": ["01"], "tasks": 5}}, [], None),
    ("lab.ipynb", {"minids": {"chapter": True}}, [], None),
    ("lab.ipynb", {"minids": {"chapter": "99"}}, [], None),                    # not a chapter of the course
    ("lab.ipynb", [], ["check_repeat_kv(f)", "check_kv_cache_size(g)"], "02"),  # the checks it calls
    ("99_lab.ipynb", "x", ["check_rms_norm(f)"], "01"),
])
def test_the_chapter_is_recognised_robustly(name, meta, cells, chapter):
    assert detect_chapter(name, {"metadata": meta}, cells, COURSE) == chapter


# --- the CSV -------------------------------------------------------------------------------------

def _row(learner, flags=()):
    return {"learner": learner, "notebook": "n.ipynb", "chapter": "01", "tasks": {"rms_norm": 1}, "score": 1,
            "max": 1, "status": "ok", "flags": list(flags)}


def test_the_csv_is_replaced_in_one_step(tmp_path):
    out = tmp_path / "grades.csv"
    out.write_text("old grades\n")
    write_csv([_row("alice", ["rms_norm: x (called)"])], out, ["rms_norm"])
    rows = list(csv.DictReader(open(out)))
    assert rows[0]["learner"] == "alice" and rows[0]["flags"] == "rms_norm: x (called)"
    assert list(rows[0]) == ["learner", "notebook", "chapter", "rms_norm", "score", "max", "status", "flags"]
    bad = _row("bob")
    bad["tasks"] = None                                              # fails half-way through writing
    with pytest.raises(AttributeError):
        write_csv([_row("carol"), bad], out, ["rms_norm"])
    assert list(csv.DictReader(open(out)))[0]["learner"] == "alice"   # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["grades.csv"]   # no temporary file left


def test_names_chosen_by_students_never_start_a_formula(tmp_path):
    out = tmp_path / "grades.csv"
    row = _row('=HYPERLINK("http://x","y")')
    row["notebook"] = "@SUM(A1).ipynb"
    write_csv([row], out, ["rms_norm"])
    (r,) = csv.DictReader(open(out))
    assert r["learner"] == "'" + row["learner"] and r["notebook"] == "'@SUM(A1).ipynb"
