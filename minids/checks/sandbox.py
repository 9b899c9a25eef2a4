"""Where learners' notebooks run: one sandboxed process per notebook, forked from a zygote that
has imported torch, IPython and minids once (see `_sandbox_kernel.py`, the code on that side).

Isolation levels, the strongest the system allows (`level="auto"`):

- ``namespaces`` (Linux with user namespaces): a new user, PID, mount, network, IPC and UTS
  namespace per notebook. The grader's uid becomes root of that namespace only, with every
  capability dropped; every mount read-only, a fresh size-limited /tmp (HOME and all config dirs
  live there and vanish with the notebook), the submissions folders hidden, no network, its own
  /proc (the grader's processes are invisible, so cannot be signalled or read), and a process
  cap (pid_max of the PID namespace, or RLIMIT_NPROC). Killing the namespace's first process
  kills every process the notebook started, detached or not.
- ``basic`` (elsewhere): its own session and process group, a private temporary HOME and
  IPython/Jupyter/matplotlib dirs, a clean environment, and the same resource limits; processes
  that leave the group are swept by parenthood (the zygote is their subreaper), session and a
  per-notebook token in their environment. A notebook runs with the grader's own permissions.

Both: RLIMIT_AS (memory), RLIMIT_CPU, RLIMIT_FSIZE, RLIMIT_NOFILE, no core files, SIGINT at a
timeout and SIGKILL of the whole group after a grace period.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import _sandbox_kernel as wire

KERNEL_SCRIPT = Path(wire.__file__).resolve()
PRELOAD = ["numpy", "torch", "safetensors.torch", "traitlets.config", "IPython.core.interactiveshell",
           "matplotlib", "matplotlib.pyplot", "tqdm.auto", "minids", "minids.checks", "minids.model",
           "minids.data", "minids.generate", "minids.train"]      # (minids.train pulls in torch.distributed: 5 s)


class SandboxError(RuntimeError):
    """The sandbox could not be started at all."""


class KernelDied(Exception):
    """The notebook's process ended (killed by a limit, by itself, or by the grader)."""


class KernelTimeout(Exception):
    """Learner code ran past its time and was interrupted (or killed)."""


class ProtocolError(Exception):
    """The notebook's process sent something that is not a well-formed answer."""


@dataclasses.dataclass(frozen=True)
class Limits:
    memory_gb: float = 4.0          # address space of each process (RLIMIT_AS)
    cpu_seconds: int = 900          # CPU time of each process (RLIMIT_CPU)
    processes: int = 128            # processes + threads (pid_max of its PID namespace, or RLIMIT_NPROC)
    file_mb: int = 1024             # largest file it may write (RLIMIT_FSIZE)
    open_files: int = 1024          # RLIMIT_NOFILE
    tmp_mb: int = 512               # its /tmp (namespaces: a tmpfs of this size)
    reply_mb: int = 256             # largest answer the grader accepts from it


def _clean_env(base: str, token: str | None) -> dict:
    home = f"{base}/home"
    threads = os.environ.get("OMP_NUM_THREADS", "1")
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin", "HOME": home,
           "IPYTHONDIR": f"{home}/.ipython", "JUPYTER_CONFIG_DIR": f"{home}/.jupyter",
           "JUPYTER_DATA_DIR": f"{home}/.local/share/jupyter",
           "JUPYTER_RUNTIME_DIR": f"{home}/.local/share/jupyter/runtime",
           "MPLCONFIGDIR": f"{home}/.config/matplotlib", "MPLBACKEND": "Agg",
           "XDG_CONFIG_HOME": f"{home}/.config", "XDG_CACHE_HOME": f"{home}/.cache",
           "XDG_DATA_HOME": f"{home}/.local/share", "TMPDIR": f"{base}/tmp", "TORCH_HOME": f"{home}/.cache/torch",
           "HF_HOME": f"{home}/.cache/huggingface", "HF_HUB_OFFLINE": "1", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
           "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TERM": "dumb",
           "PYTHONDONTWRITEBYTECODE": "1"}
    if token:
        env["MINIDS_SANDBOX"] = token
    return env


def _ancestor_or_same(d: Path, p: Path) -> bool:
    try:
        p.relative_to(d)
        return True
    except ValueError:
        return False


def essential_paths() -> list[str]:
    """What a notebook's process must be able to read: the interpreter, its libraries, minids."""
    import minids
    out = []
    for p in (sys.prefix, sys.base_prefix, Path(sys.executable).resolve().parent, Path(sys.executable).parent,
              Path(minids.__file__).resolve().parents[1], KERNEL_SCRIPT.parent, *sys.path):
        try:
            p = str(Path(p).resolve())
        except (OSError, RuntimeError):
            continue
        if p not in out and os.path.isdir(p):
            out.append(p)
    return out


def home_folders() -> list[str]:
    """The grader's home (from $HOME and from the password database): masked in the sandbox."""
    out = []
    try:
        import pwd
        out.append(pwd.getpwuid(os.getuid()).pw_dir)
    except (ImportError, KeyError):
        pass
    out.append(os.path.expanduser("~"))
    return [str(Path(p).resolve()) for p in dict.fromkeys(out) if p and os.path.isdir(p)]


def hide_list(roots: list[Path], files: list[Path]) -> list[str]:
    """Folders (or, where a folder also holds the interpreter or minids, files) to hide from the
    notebooks: a learner's code must not read another learner's submission."""
    import minids
    essential = [Path(p).resolve() for p in (sys.prefix, sys.base_prefix, Path(sys.executable).parent,
                                              Path(minids.__file__).parent, KERNEL_SCRIPT.parent)]
    out, covered = [], []
    for d in roots:
        d = d.resolve()
        if d == Path("/") or any(_ancestor_or_same(d, e) for e in essential):
            continue
        out.append(str(d))
        covered.append(d)
    for f in files:
        f = f.resolve()
        if not any(_ancestor_or_same(d, f) for d in covered):
            out.append(str(f))
    return out


class Zygote:
    """One per grading run: the parent of every notebook's sandbox."""

    def __init__(self, limits: Limits | None = None, hide: list[str] = (), level: str = "auto"):
        if level not in ("auto", "namespaces", "basic"):
            raise ValueError(f"isolation level must be auto, namespaces or basic, not {level!r}")
        self.limits, self.hide, self.requested = limits or Limits(), list(hide), level
        self.level = None if level == "auto" else level
        self.why_basic = None if level != "basic" else "requested"
        self.proc = self.ctl = None
        self.home = tempfile.mkdtemp(prefix="minids-grade-")

    # -- life cycle
    def start(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        import minids
        cfg = {"fd": child.fileno(), "preload": PRELOAD, "path0": str(Path(minids.__file__).resolve().parents[1])}
        env = _clean_env(self.home, None)
        for key in ("HOME", "MPLCONFIGDIR", "TMPDIR"):
            os.makedirs(env[key], exist_ok=True)
        self.log = open(os.path.join(self.home, "zygote.log"), "wb")
        self.proc = subprocess.Popen([sys.executable, "-I", str(KERNEL_SCRIPT), "zygote", json.dumps(cfg)],
                                     pass_fds=[child.fileno()], env=env, cwd=self.home, start_new_session=True,
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        child.close()
        self.ctl = parent
        msg = self._ctl_recv(180)
        if not msg or msg.get("op") != "ready":
            self.close()
            raise SandboxError("the notebook runner did not start: " + self._log_tail())

    def _log_tail(self) -> str:
        try:
            return Path(self.home, "zygote.log").read_text(errors="replace")[-800:].strip() or "(no output)"
        except OSError:
            return "(no output)"

    def _ctl_recv(self, timeout: float) -> dict | None:
        r, _, _ = select.select([self.ctl], [], [], timeout)
        if not r:
            return None
        data = self.ctl.recv(1 << 16)
        return json.loads(data) if data else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _kill_process(self) -> None:
        """SIGKILL the zygote's whole process group and reap it."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait()
            self.proc = None

    def _close_ctl(self) -> None:
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None

    def close(self) -> None:
        self._kill_process()
        self._close_ctl()
        if getattr(self, "log", None):
            self.log.close()
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # -- one notebook
    def spawn(self) -> Kernel:
        """A fresh sandboxed kernel, ready to run cells."""
        if not self.alive():
            self.close_ctl_only()
            self.start()
        if self.level is None:                      # auto: try namespaces once, else basic for the run
            if not sys.platform.startswith("linux") or not os.path.exists("/proc/self/ns/user"):
                self.level, self.why_basic = "basic", "no user namespaces on this system"
            else:
                try:
                    k = self._spawn("namespaces")
                    self.level = "namespaces"
                    return k
                except SandboxError as e:
                    self.level, self.why_basic = "basic", str(e)
        return self._spawn(self.level)

    def _spawn(self, level: str) -> Kernel:
        token = secrets.token_hex(16)
        if level == "namespaces":
            base, private = "/tmp/minids", None
        else:
            private = tempfile.mkdtemp(prefix="minids-nb-")
            base = private
        cfg = {"level": level, "limits": dataclasses.asdict(self.limits), "tmp_mb": self.limits.tmp_mb,
               "hide": self.hide, "keep": essential_paths(), "mask": home_folders(), "base": base,
               "env": _clean_env(base, token)}
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            socket.send_fds(self.ctl, [json.dumps({"op": "spawn", "config": cfg}).encode()], [theirs.fileno()])
        finally:
            theirs.close()
        msg = self._ctl_recv(30)
        if not msg or msg.get("op") != "spawned":
            ours.close()
            raise SandboxError("the notebook runner did not answer")
        kernel = Kernel(self, ours, int(msg["pid"]), level, private, token)
        try:
            kernel.wait_ready(120)
        except (KernelDied, KernelTimeout, ProtocolError, SandboxError) as e:
            kernel.kill()
            raise SandboxError(f"{level} sandbox failed to start: {e}") from None
        return kernel

    def close_ctl_only(self) -> None:
        self._close_ctl()
        self._kill_process()


class Kernel:
    """The grader's handle on one notebook's process."""

    def __init__(self, zygote: Zygote, sock: socket.socket, pid: int, level: str, private: str | None, token: str):
        self.zygote, self.sock, self.pid, self.level = zygote, sock, pid, level
        self.private, self.token = private, token
        self.dead = self.timed_out = False
        self.deadline = float("inf")
        self.grace = 5.0
        self.next_id = 0
        self.grader_callables: dict[int, object] = {}
        self.forbidden: list[str] = []
        self.hits: set[str] = set()
        self.reply_cap = zygote.limits.reply_mb << 20

    # -- framing with deadlines
    def _read_exact(self, n: int, deadline: float) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise KernelTimeout("timed out")
            r, _, _ = select.select([self.sock], [], [], min(left, 1.0))
            if not r:
                continue
            try:
                chunk = self.sock.recv(min(n - len(buf), 1 << 20))
            except OSError as e:
                raise KernelDied(str(e)) from None
            if not chunk:
                raise KernelDied("the notebook's process ended")
            buf += chunk
        return bytes(buf)

    def _recv(self, deadline: float) -> tuple[dict, bytes]:
        jl, bl = wire.HEADER.unpack(self._read_exact(wire.HEADER.size, deadline))
        if jl > wire.MAX_JSON or bl > self.reply_cap:
            raise ProtocolError(f"an answer of {jl + bl:,} bytes (the limit is {self.reply_cap:,})")
        try:
            msg = json.loads(self._read_exact(jl, deadline))
        except (ValueError, RecursionError):
            raise ProtocolError("an answer that is not JSON") from None
        if not isinstance(msg, dict):
            raise ProtocolError("an answer that is not a JSON object")
        return msg, (self._read_exact(bl, deadline) if bl else b"")

    def _send(self, msg: dict, blob: bytes = b"") -> None:
        if self.dead:
            raise KernelDied("the notebook's process has ended")
        try:
            self.sock.settimeout(max(1.0, self.deadline - time.monotonic()) if self.deadline < float("inf") else 60)
            wire.send(self.sock, msg, blob)
        except (OSError, socket.timeout) as e:
            self.kill()
            raise KernelDied(f"cannot reach the notebook's process: {e}") from None
        finally:
            self.sock.settimeout(None)

    def wait_ready(self, timeout: float) -> None:
        msg, _ = self._recv(time.monotonic() + timeout)
        if msg.get("op") == "error":
            raise SandboxError(f"{msg.get('stage')}: {msg.get('message')}")
        if msg.get("op") != "ready":
            raise ProtocolError("no greeting")

    def request(self, msg: dict, blob: bytes, expect: str) -> tuple[dict, bytes]:
        """Send a request, serve the callbacks it causes, return its answer. At the deadline:
        SIGINT to the group, then after `grace` seconds SIGKILL; both raise KernelTimeout."""
        self.next_id += 1
        rid = msg["id"] = self.next_id
        self._send(msg, blob)
        interrupted = False
        deadline = self.deadline
        while True:
            try:
                m, b = self._recv(deadline)
            except KernelTimeout:
                self.timed_out = True
                if interrupted:
                    self.kill()
                    raise KernelTimeout("ran past the time limit and ignored the interrupt: killed") from None
                self.interrupt()
                interrupted, deadline = True, time.monotonic() + self.grace
                continue
            except (KernelDied, ProtocolError):
                self.kill()
                raise
            if m.get("op") == "callback" and isinstance(m.get("id"), int) and m["id"] < 0:
                from .remote import serve_callback
                serve_callback(self, m, b)
                continue
            if m.get("op") == expect and m.get("id") == rid:
                if interrupted:
                    raise KernelTimeout("ran past the time limit and was interrupted")
                return m, b
            # anything else is stale or forged: ignored

    # -- the notebook's cells
    def run_cell(self, code: str, timeout: float) -> str:
        """'ok', 'error:<Name>', 'timeout' (interrupted; the kernel lives on), 'killed' or 'died'."""
        self.deadline = time.monotonic() + timeout
        try:
            m, _ = self.request({"op": "run", "code": code}, b"", "done")
        except KernelTimeout:
            return "killed" if self.dead else "timeout"
        except (KernelDied, ProtocolError):
            return "died"
        finally:
            self.deadline = float("inf")
        return "ok" if m.get("ok") is True else f"error:{str(m.get('ename'))[:60]}"

    # -- signals and the end
    def interrupt(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGINT)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self) -> None:
        """SIGKILL to the sandbox's process group; namespaces: that ends its PID namespace, with
        every process in it. Basic isolation: then a sweep of whatever left the group."""
        if self.dead:
            return
        self.dead = True
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.level != "namespaces":
            sweep(self.pid, self.token, self.zygote.proc.pid if self.zygote.proc else None)
        try:
            self.sock.close()
        except OSError:
            pass
        if self.private:
            shutil.rmtree(self.private, ignore_errors=True)

    def close(self) -> None:
        if not self.dead:
            try:
                self.sock.settimeout(1)
                wire.send(self.sock, {"op": "quit"})
            except OSError:
                pass
        self.kill()


def _stat(pid: str) -> tuple[int, int, int, str] | None:
    """(ppid, pgid, session, state) of a process, from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    rest = data[data.rfind(")") + 2:].split()
    try:
        return int(rest[1]), int(rest[2]), int(rest[3]), rest[0]
    except (IndexError, ValueError):
        return None


def sweep(session: int, token: str, reaper: int | None, rounds: int = 6) -> int:
    """Kill every process of a finished notebook that escaped its group: same session, the
    notebook's token in its environment, or an orphan handed to the zygote (the subreaper)."""
    if not os.path.isdir("/proc"):
        return 0
    mark, killed, me = f"MINIDS_SANDBOX={token}".encode(), 0, os.getpid()
    for _ in range(rounds):
        found = 0
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) in (me, reaper):
                continue
            st = _stat(pid)
            if st is None or st[3] == "Z":
                continue
            hit = st[2] == session or st[1] == session or (reaper is not None and st[0] == reaper)
            if not hit:
                try:
                    with open(f"/proc/{pid}/environ", "rb") as f:
                        hit = mark in f.read()
                except OSError:
                    pass
            if hit:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                    found += 1
                except (ProcessLookupError, PermissionError):
                    pass
        killed += found
        if not found:
            break
        time.sleep(0.05)
    return killed


def dumps_for_kernel(kernel: Kernel, obj) -> bytes:
    """Pickle what the grader sends (trusted direction). Functions that only exist in the
    grader (closures, lambdas, bound methods) become handles: calling them calls back here."""
    import functools
    import io
    import types

    class P(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, types.MethodType) or (
                    isinstance(o, types.FunctionType) and (o.__closure__ or "<" in o.__qualname__)):
                h = len(kernel.grader_callables) + 1
                kernel.grader_callables[h] = o
                return ("cb", h)
            if isinstance(o, functools.partial):
                try:
                    pickle.dumps(o)
                except Exception:                       # noqa: BLE001
                    h = len(kernel.grader_callables) + 1
                    kernel.grader_callables[h] = o
                    return ("cb", h)
            return None

    buf = io.BytesIO()
    P(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()
