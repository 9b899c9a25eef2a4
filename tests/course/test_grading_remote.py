"""The grader's remote proxy on a synthetic course whose checks live here: the learner's functions
run in the notebook's sandbox and return plain data; values, in-place updates, callbacks into
the check, returned modules, errors, timeouts and hostile answers."""

import json
import os
import struct
from textwrap import dedent

import nbformat
import pytest
import torch
from grading_attacks import shared_zygote
from torch import nn

from minids.checks.grade import grade_notebook
from minids.checks.remote import SKIP, decode, load_tensors
from minids.checks.sandbox import Limits, ProtocolError, Zygote

# --- the synthetic course: its checks run in THIS process --------------------------------------


def check_double(fn):
    for x in (torch.arange(3.0), torch.randn(2, 5)):
        got = fn(x)
        assert isinstance(got, torch.Tensor) and torch.equal(got, 2 * x), got


def check_answer(value):
    assert value == 42, value


def check_measurements(results):
    assert isinstance(results, dict) and set(results) == {"loss", "steps", "shape"}, results
    assert 1.0 < results["loss"] < 2.0 and results["steps"] == [1, 2, 3], results
    assert results["shape"] == (2, 3) and isinstance(results["shape"], tuple), results


def check_inplace(add_one_):
    t = torch.zeros(3)
    add_one_(t)                                     # must change t itself
    assert torch.equal(t, torch.ones(3)), t


def check_grads(backward):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x = torch.randn(4, 3)
    backward(model, x)                              # leaves .grad on the check's model
    ref = nn.Linear(3, 1)
    ref.load_state_dict(model.state_dict())
    ref(x).sum().backward()
    assert model.weight.grad is not None and torch.allclose(model.weight.grad, ref.weight.grad)


def check_callback(apply_all):
    calls = []

    def triple(t):                                  # a closure: it must run HERE, counting calls
        calls.append(t.shape)
        return t * 3
    out = apply_all([triple, triple], torch.ones(2))
    assert torch.equal(out, torch.full((2,), 6.0)) and len(calls) == 2, (out, calls)


def check_module(make_linear):
    m = make_linear(4, 2)
    assert isinstance(m, nn.Linear), type(m)
    assert sum(p.numel() for p in m.parameters()) == 10
    y = m(torch.ones(1, 4))                         # its forward runs in the notebook
    assert y.shape == (1, 2)


def check_attention(attend):
    q = torch.randn(1, 2, 4, 8)
    got = attend(q, q, q)
    assert torch.allclose(got, torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True), atol=1e-5)


def check_fails(fn):
    fn(1)


def check_slow(fn):
    fn()


TASKS = {"double": check_double, "answer": check_answer, "measurements": check_measurements,
         "inplace": check_inplace, "grads": check_grads, "callback": check_callback, "module": check_module,
         "attention": check_attention, "fails": check_fails, "slow": check_slow}
ARGS = {"double": "double", "answer": "answer", "measurements": "results", "inplace": "add_one_",
        "grads": "backward", "callback": "apply_all", "module": "make_linear", "attention": "attend",
        "fails": "fails", "slow": "slow"}
COURSE = {"99": {"notebook": "99_synthetic.ipynb",
                 "tasks": [{"task": t, "args": [ARGS[t]], "kwargs": []} for t in TASKS],
                 "checks": dict(TASKS),
                 "forbidden": {t: ["torch.nn.functional.scaled_dot_product_attention"] if t == "attention" else []
                               for t in TASKS}}}
N = len(TASKS)

HONEST = {
    "double": "def double(x):\n    return x * 2",
    "answer": "answer = 6 * 7",
    "measurements": "import numpy as np\nresults = {'loss': np.float64(1.5), 'steps': [1, 2, 3], 'shape': (2, 3)}",
    "inplace": "def add_one_(t):\n    t.add_(1)",
    "grads": "def backward(model, x):\n    model(x).sum().backward()",
    "callback": "def apply_all(fns, x):\n    return sum(f(x) for f in fns)",
    "module": "from torch import nn\ndef make_linear(i, o):\n    return nn.Linear(i, o)",
    "attention": dedent("""
        import torch
        def attend(q, k, v):
            T = q.size(-2)
            s = (q @ k.transpose(-2, -1)) / q.size(-1) ** 0.5
            s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float('-inf'))
            return s.softmax(-1) @ v"""),
    "fails": "def fails(x):\n    raise ValueError('nope')",
    "slow": "def slow():\n    import time\n    while True:\n        time.sleep(0.05)",
}


def notebook(tmp_path, name: str, cells: dict | list, **meta) -> str:
    nb = nbformat.v4.new_notebook()
    nb.metadata["minids"] = meta or {"chapter": "99"}
    srcs = list(cells.values()) if isinstance(cells, dict) else list(cells)
    nb.cells = [nbformat.v4.new_code_cell("import torch")] + [nbformat.v4.new_code_cell(s) for s in srcs]
    path = tmp_path / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def zygote():
    z = shared_zygote()
    limits = z.limits
    z.limits = Limits(memory_gb=3, tmp_mb=64, reply_mb=16)      # the `huge` answer (40 MiB) is over the cap
    yield z
    z.limits = limits


def run(zygote, path, timeout=20, grace=2.0):
    return grade_notebook(path, timeout, course=COURSE, zygote=zygote, grace=grace)


# --- honest work ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_functions_values_updates_callbacks_and_modules_score(zygote, tmp_path):
    row = run(zygote, notebook(tmp_path, "honest", HONEST), timeout=3, grace=1.0)
    expected = dict.fromkeys(TASKS, 1)
    expected.update(fails=0, slow=0)                 # the learner's ValueError; a hang (interrupted)
    assert row["tasks"] == expected, row["messages"]
    assert row["max"] == N and row["chapter"] == "99" and row["flags"] == []
    assert row["status"] == "timeout"                 # the `slow` task ran past --timeout
    assert "ValueError" in row["messages"]["fails"]


@pytest.mark.slow
def test_stubs_and_unanswered_values_score_zero(zygote, tmp_path):
    stubs = {t: (f"{ARGS[t]} = None" if t in ("answer", "measurements") else
                 f"def {ARGS[t]}(*a, **k):\n    raise NotImplementedError") for t in TASKS}
    row = run(zygote, notebook(tmp_path, "stubs", stubs))
    assert row["score"] == 0 and row["max"] == N
    assert "NotImplementedError" in row["messages"]["double"]


@pytest.mark.slow
def test_a_renamed_function_is_found_through_the_notebooks_own_check_call(zygote, tmp_path):
    cells = {"double": "def my_double(x):\n    return 2 * x", "call": "check_double(my_double)  # renamed"}
    row = run(zygote, notebook(tmp_path, "renamed", cells))
    assert row["tasks"]["double"] == 1


# --- forbidden calls ----------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("how", ["direct", "alias", "getattr"])
def test_a_forbidden_call_is_flagged_and_scores_zero(zygote, tmp_path, how):
    body = {"direct": "import torch.nn.functional as F\ndef attend(q, k, v):\n"
                      "    return F.scaled_dot_product_attention(q, k, v, is_causal=True)",
            "alias": "from torch.nn.functional import scaled_dot_product_attention as sdpa\n"
                     "def helper(q, k, v):\n    return sdpa(q, k, v, is_causal=True)\n"
                     "def attend(q, k, v):\n    return helper(q, k, v)",
            "getattr": "import torch\ndef attend(q, k, v):\n    name = 'scaled_dot_' + 'product_attention'\n"
                       "    return getattr(torch.nn.functional, name)(q, k, v, is_causal=True)"}[how]
    row = run(zygote, notebook(tmp_path, f"sdpa_{how}", {"attention": body}))
    assert row["tasks"]["attention"] == 0 and "forbids" in row["messages"]["attention"]
    flags = " ".join(row["flags"])
    assert "attention: torch.nn.functional.scaled_dot_product_attention (called)" in flags
    if how != "getattr":                              # a computed name is only seen at run time
        assert "(in the source)" in flags


# --- hostile answers --------------------------------------------------------------------------------

HOSTILE = {
    # the expected value is in the check's frame, in-process; here there is no such frame
    "stack": "import sys\ndef double(x):\n    f = sys._getframe(1)\n    while f:\n"
             "        if 'x' in f.f_locals and f is not sys._getframe(0):\n            return 2 * f.f_locals['x']\n"
             "        f = f.f_back\n    return x",
    # a tensor subclass that says yes to every comparison: only its numbers travel
    "subclass": dedent("""
        import torch
        class Yes(torch.Tensor):
            @classmethod
            def __torch_function__(cls, func, types, args=(), kwargs=None):
                if getattr(func, '__name__', '') in ('equal', 'allclose', '__eq__'):
                    return True
                return super().__torch_function__(func, types, args, kwargs or {})
        def double(x):
            return Yes(torch.zeros_like(x))"""),
    # an object that is not plain data
    "object": "class Sneaky:\n    def __eq__(self, other):\n        return True\ndef double(x):\n    return Sneaky()",
    # more data than the grader accepts
    "huge": "import torch\ndef double(x):\n    return torch.zeros(40 << 20, dtype=torch.uint8)",
    # garbage and forged frames on every file descriptor, then the right answer
    "garbage": dedent("""
        import os, struct, json
        def double(x):
            msg = json.dumps({'op': 'result', 'id': 1, 'value': 1}).encode()
            for fd in range(3, 64):
                try:
                    os.write(fd, struct.pack('>II', len(msg), 0) + msg + b'\\xff' * 64)
                except OSError:
                    pass
            return 2 * x"""),
}


@pytest.mark.slow
@pytest.mark.parametrize("attack", sorted(HOSTILE))
def test_hostile_answers_never_pass_and_never_break_the_grader(zygote, tmp_path, attack):
    row = run(zygote, notebook(tmp_path, attack, {"double": HOSTILE[attack], "answer": "answer = 42"}))
    assert row["tasks"]["double"] == 0, row["messages"]
    assert row["tasks"]["answer"] == 1, row["messages"]   # the next task is graded (in a fresh kernel if needed)
    assert not row["status"].startswith("error"), row["status"]


@pytest.mark.slow
def test_a_function_that_ignores_sigint_is_killed_and_the_other_tasks_still_score(zygote, tmp_path):
    cells = dict(HONEST)
    cells["slow"] = dedent("""
        import signal
        def slow():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            while True:
                pass""")
    row = run(zygote, notebook(tmp_path, "stubborn", cells), timeout=2, grace=1.0)
    assert row["tasks"]["slow"] == 0 and row["status"].startswith("timeout")
    assert row["score"] == N - 2                        # all but `fails` and `slow`: evaluated in a fresh kernel


@pytest.mark.slow
def test_limits_memory_and_processes(zygote, tmp_path):
    cells = dict(HONEST, slow="def slow():\n    return None")
    hog = "x = bytearray(16 << 30)"                   # over the 3 GiB address-space limit: MemoryError
    bomb_src = dedent("""
        import os, time
        kids = 0
        for _ in range(400):
            try:
                if os.fork() == 0:
                    os.closerange(0, 3)
                    time.sleep(30)
                    os._exit(0)
                kids += 1
            except OSError:
                break
        print(kids)""")
    bomb = dedent(f"""
        import subprocess, sys
        out = subprocess.run([sys.executable, '-I', '-S', '-c', {bomb_src!r}], capture_output=True, text=True,
                             timeout=60)
        kids = int(out.stdout)
        assert 20 < kids < 300, kids""")               # a fork bomb (from a small process) meets the cap
    row = run(zygote, notebook(tmp_path, "limits", [*cells.values(), hog, bomb]), timeout=20)
    assert row["tasks"]["double"] == 1 and row["status"] == "1 cell(s) raised", row
    assert row["score"] == N - 1


# --- the channel never trusts the notebook ---------------------------------------------------------

def test_decode_accepts_plain_data_only():
    t = {"t0": torch.arange(3)}
    assert decode({"t": "tuple", "v": [1, 2.5, "a", None, True]}, {}) == (1, 2.5, "a", None, True)
    assert torch.equal(decode({"t": "tensor", "k": "t0"}, t), torch.arange(3))
    assert decode({"t": "dict", "v": [[{"t": "tuple", "v": [1, 2]}, "x"]]}, {}) == {(1, 2): "x"}
    assert decode({"t": "size", "v": [2, 3]}, {}) == torch.Size([2, 3])
    assert decode({"t": "callable", "h": 1}, {}) is SKIP        # no kernel: nothing to call
    bad = [{"t": "pickle", "v": "gASV"}, {"t": "tensor", "k": "missing"}, {"t": "dtype", "v": "Tensor"},
           {"t": "npscalar", "dtype": "O", "v": 1}, {"t": "dict", "v": [[[1], 2]]}, {"no": "type"}, b"bytes"]
    for node in bad:
        with pytest.raises(ProtocolError):
            decode(node, t)
    deep = []
    for _ in range(200):
        deep = [deep]
    with pytest.raises(ProtocolError):
        decode(deep, {})


def test_garbage_tensor_bytes_are_a_protocol_error():
    for blob in (b"\x00" * 7, struct.pack("<Q", 10 ** 12) + b"{", struct.pack("<Q", 2) + b"{}" + b"x",
                 struct.pack("<Q", 40) + json.dumps({"t0": {"dtype": "F32", "shape": [4], "data_offsets": [0, 99]}})
                 .encode().ljust(40)):
        with pytest.raises(ProtocolError):
            load_tensors(blob)


@pytest.mark.slow
def test_basic_isolation_sweeps_detached_processes(tmp_path):
    """Without namespaces: own session, private HOME, the same verdicts; a detached process
    (double fork, new session) does not survive its notebook."""
    marker = tmp_path / "alive"
    linger = ("import os, subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'import time, sys; time.sleep(3); "
              f"open(sys.argv[1], \"w\").write(\"1\")', {str(marker)!r}], start_new_session=True)")
    home = "import os\nassert os.environ['HOME'] != os.path.expanduser('~root') and 'minids-nb-' in os.environ['HOME']"
    cells = [*{k: v for k, v in HONEST.items() if k != "slow"}.values(), linger, home, "def slow():\n    pass"]
    with Zygote(Limits(memory_gb=3), level="basic") as z:
        row = grade_notebook(notebook(tmp_path, "basic", cells), 20, course=COURSE, zygote=z)
        assert z.level == "basic"
    assert row["score"] == N - 1 and row["status"] == "ok", row
    import time
    time.sleep(4)
    assert not marker.exists()


@pytest.mark.slow
def test_the_graders_home_folder_is_masked(zygote):
    """Only what the kernel needs (the interpreter, minids) is visible under the grader's home."""
    import pwd
    from pathlib import Path

    from minids.checks.sandbox import essential_paths
    home = Path(pwd.getpwuid(os.getuid()).pw_dir).resolve()
    allowed = {Path(p).relative_to(home).parts[0] for p in essential_paths()
               if Path(p).is_relative_to(home) and Path(p) != home}
    k = zygote.spawn()
    try:
        if k.level != "namespaces":
            pytest.skip("needs namespace isolation")
        if home == Path("/") or any(Path(p) == home or home.is_relative_to(p) for p in essential_paths()):
            pytest.skip("the grader's home holds the interpreter or minids itself")
        cell = f"import os\nassert set(os.listdir({str(home)!r})) <= {allowed!r}, os.listdir({str(home)!r})"
        assert k.run_cell(cell, 20) == "ok"
        assert k.run_cell(f"open({str(home / 'x')!r}, 'w')", 20) == "error:OSError"
    finally:
        k.close()
