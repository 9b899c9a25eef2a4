"""The grader's other half: the code that runs on the LEARNER's side. Never imported by the grader
for anything but its message framing; started as a script:

    python -I _sandbox_kernel.py zygote '{"fd": N, ...}'

The zygote imports the heavy libraries once (torch, IPython, minids), then forks one process per
notebook on request. The fork becomes a sandbox (see `child_main`): a new session; with Linux
namespaces where the system allows them, its own user, PID, mount, network, IPC and UTS
namespaces, every mount read-only except a fresh size-limited /tmp, the submissions hidden, no
capabilities; always resource limits, its own HOME and IPython/Jupyter/matplotlib dirs, a clean
environment. Inside, `Kernel` executes the notebook's cells with IPython and answers the grader:
it evaluates the argument expressions of the course's check calls and calls the learner's
functions when the grader's checks call their proxies.

Everything sent to the grader is plain data: a JSON tree whose tensors travel as safetensors
bytes. The grader never unpickles what this side writes; this side unpickles what the grader
sends (the arguments a check passes), which is trusted.
"""

from __future__ import annotations

import ctypes
import json
import os
import pickle
import signal
import socket
import struct
import sys

HEADER = struct.Struct(">II")              # JSON length, blob length
MAX_JSON = 64 << 20
PARAM_MAX_DEPTH = 64

# --- framing (shared with the grader) -------------------------------------------------------------


def send(sock: socket.socket, msg: dict, blob: bytes = b"") -> None:
    data = json.dumps(msg, allow_nan=True).encode()
    sock.sendall(HEADER.pack(len(data), len(blob)) + data)
    if blob:
        sock.sendall(blob)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if not k:
            raise EOFError("the grader closed the channel")
        got += k
    return bytes(buf)


def recv(sock: socket.socket) -> tuple[dict, bytes]:
    """Blocking read of one frame (this side trusts the grader's frames)."""
    jl, bl = HEADER.unpack(_recv_exact(sock, HEADER.size))
    msg = json.loads(_recv_exact(sock, jl))
    return msg, (_recv_exact(sock, bl) if bl else b"")


# --- Linux plumbing (ctypes; nothing here runs on other systems) ----------------------------------

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP, PR_SET_SECUREBITS = 1, 38, 24, 28
PR_SET_CHILD_SUBREAPER = 36
SYS_MOUNT_SETATTR = 442                     # the same number on x86_64 and aarch64
MOUNT_ATTR_RDONLY, AT_RECURSIVE, AT_FDCWD = 1, 0x8000, -100

_libc = None


def libc():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
        _libc.syscall.restype = ctypes.c_long
    return _libc


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src, target, fstype, flags, data=None) -> None:
    enc = lambda s: None if s is None else os.fsencode(s)  # noqa: E731
    _check(libc().mount(enc(src), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def prctl(option: int, arg: int) -> int:
    return libc().prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _read_only(path: str = "/") -> None:
    """Every mount at or under `path` becomes read-only: mount_setattr(AT_RECURSIVE) where the
    kernel has it (5.12+), else a read-only bind-remount of each mount point."""
    class MountAttr(ctypes.Structure):
        _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                    ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]
    attr = MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    if libc().syscall(SYS_MOUNT_SETATTR, AT_FDCWD, os.fsencode(path), AT_RECURSIVE, ctypes.byref(attr),
                      ctypes.sizeof(attr)) == 0:
        return
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].encode().decode("unicode_escape")
            if mp == path or mp.startswith(path.rstrip("/") + "/"):
                points.append(mp)
    keep = {os.ST_NOSUID: MS_NOSUID, os.ST_NODEV: MS_NODEV, os.ST_NOEXEC: MS_NOEXEC,
            os.ST_NOATIME: MS_NOATIME, os.ST_NODIRATIME: MS_NODIRATIME, 4096: MS_RELATIME}
    for mp in sorted(set(points), key=len):
        try:
            st = os.statvfs(mp)
            flags = MS_REMOUNT | MS_BIND | MS_RDONLY
            for bit, ms in keep.items():
                if st.f_flag & bit:
                    flags |= ms
            _mount(None, mp, None, flags)
        except OSError:
            if not mp.startswith(("/proc", "/sys", "/dev")):
                raise


SCRATCH = ("/tmp", "/var/tmp", "/dev/shm")


def setup_namespaces(cfg: dict) -> None:
    """In the fork that becomes the sandbox (single-threaded): new user, mount, PID, network, IPC
    and UTS namespaces; the grader's uid becomes root of the new user namespace only; every
    mount read-only; the submissions hidden; a fresh /tmp (and /dev/shm) of limited size."""
    uid, gid = os.getuid(), os.getgid()
    _check(libc().unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS),
           "unshare")
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"0 {uid} 1")
    _write("/proc/self/gid_map", f"0 {gid} 1")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    for path in cfg.get("hide", []):                      # other learners' files: not even readable
        try:
            if os.path.isdir(path):
                _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, "size=4k,mode=000")
            elif os.path.exists(path):
                _mount("/dev/null", path, None, MS_BIND)
        except OSError:
            if os.path.exists(path) and not path.startswith("/tmp/"):
                raise
    # The grader's home folders are masked by an empty read-only tmpfs, and the scratch folders
    # replaced by fresh ones; what the kernel needs (the interpreter, minids) and lives under
    # either is bound back, read-only.
    keep = [os.path.realpath(p) for p in cfg.get("keep", [])]
    masks = []
    for m in cfg.get("mask", []):
        m = os.path.realpath(m)
        if m != "/" and os.path.isdir(m) and not any(k == m or m.startswith(k + "/") for k in keep) \
                and not m.startswith(tuple(d + "/" for d in SCRATCH)) and m not in masks:
            masks.append(m)
    covered = tuple(d + "/" for d in (*SCRATCH, *masks))
    needed = []
    for p in sorted(keep, key=len):
        if p.startswith(covered) and os.path.isdir(p) and not any(p.startswith(q + "/") for q in needed):
            needed.append(p)
    fds = [(p, os.open(p, os.O_PATH | os.O_DIRECTORY)) for p in needed]
    _read_only("/")
    for m in masks:
        _mount("tmpfs", m, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    for extra, size in (("/tmp", f"size={int(cfg['tmp_mb'])}m"), ("/dev/shm", "size=64m"), ("/var/tmp", "size=64m")):
        if os.path.isdir(extra) and not os.path.islink(extra):
            try:
                _mount("tmpfs", extra, "tmpfs", MS_NOSUID | MS_NODEV, f"{size},mode=1777")
            except OSError:
                if extra == "/tmp":
                    raise
    for p, fd in fds:
        os.makedirs(p, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", p, None, MS_BIND | MS_REC)
        _read_only(p)
        os.close(fd)
    for m in masks:
        _read_only(m)


def setup_init(cfg: dict) -> None:
    """PID 1 of the new PID namespace: its own /proc (the grader's processes are not even
    visible), /proc/sys read-only with pid_max capping the number of processes, loopback up."""
    import fcntl
    try:
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        try:                                              # per-namespace pid_max: Linux 6.14+
            _write("/proc/sys/kernel/pid_max", str(max(301, int(cfg["limits"]["processes"]) + 3)))
        except OSError:
            pass
        _mount("/proc/sys", "/proc/sys", None, MS_BIND | MS_REC)
        _mount(None, "/proc/sys", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:                                       # no fresh /proc allowed: hide the host's
        _mount("tmpfs", "/proc", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, "size=4k")
    try:
        s = socket.socket()
        ifr = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, ifr))[1]          # SIOCGIFFLAGS
        fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", flags | 1))          # SIOCSIFFLAGS, IFF_UP
        s.close()
    except OSError:
        pass


def drop_capabilities() -> None:
    """No capability left, none to regain: bounding set emptied, securebits locked, no new privileges."""
    try:
        last = int(open("/proc/sys/kernel/cap_last_cap").read())
    except (OSError, ValueError):
        last = 63
    for cap in range(last + 1):
        prctl(PR_CAPBSET_DROP, cap)
    # SECBIT_NOROOT, SECBIT_NO_SETUID_FIXUP and SECBIT_NO_CAP_AMBIENT_RAISE, each with its lock
    _check(prctl(PR_SET_SECUREBITS, 0b11001111), "securebits")
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)()
    _check(libc().capset(header, data), "capset")


def apply_limits(limits: dict, count_existing: bool) -> None:
    import resource
    gib = int(float(limits["memory_gb"]) * (1 << 30))
    pairs = [(resource.RLIMIT_AS, gib), (resource.RLIMIT_CPU, int(limits["cpu_seconds"])),
             (resource.RLIMIT_FSIZE, int(limits["file_mb"]) << 20), (resource.RLIMIT_NOFILE, int(limits["open_files"])),
             (resource.RLIMIT_CORE, 0)]
    if hasattr(resource, "RLIMIT_NPROC"):
        extra = _count_own_processes() if count_existing else 0
        pairs.append((resource.RLIMIT_NPROC, int(limits["processes"]) + extra))
    for which, value in pairs:
        try:
            soft, hard = resource.getrlimit(which)
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError):
            pass


def _count_own_processes() -> int:
    """RLIMIT_NPROC counts every process of the uid: in basic isolation the grader's own count
    it, so the limit is what runs now plus the allowance."""
    uid, n = os.getuid(), 0
    try:
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    n += os.stat(f"/proc/{p}").st_uid == uid
                except OSError:
                    pass
    except OSError:
        return 0
    return n


# --- the zygote ---------------------------------------------------------------------------------


def zygote_main(cfg: dict) -> None:
    ctl = socket.socket(fileno=cfg["fd"])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        prctl(PR_SET_CHILD_SUBREAPER, 1)   # orphans of a sandbox come back here: the grader sweeps them
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if cfg.get("path0"):
        sys.path.insert(0, cfg["path0"])
    import warnings
    warnings.filterwarnings("ignore")
    for name in cfg.get("preload", []):
        try:
            __import__(name)
        except Exception:                               # noqa: BLE001 -- a notebook may not need it
            pass
    ctl.send(json.dumps({"op": "ready", "pid": os.getpid()}).encode())
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(ctl, 1 << 20, 1)
        except OSError:
            os._exit(0)
        while True:                                     # reap finished sandboxes
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
        if not data:
            os._exit(0)
        req = json.loads(data)
        if req.get("op") != "spawn" or not fds:
            for fd in fds:
                os.close(fd)
            continue
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                ctl.close()
                child_main(req["config"], fds[0])
            except BaseException as e:               # noqa: BLE001 -- report, then leave
                try:
                    send(socket.socket(fileno=fds[0]), {"op": "error", "stage": "sandbox", "message": f"{e}"})
                except Exception:                       # noqa: BLE001
                    pass
            finally:
                os._exit(code)
        os.close(fds[0])
        ctl.send(json.dumps({"op": "spawned", "pid": pid}).encode())


def _report_failure(fd: int, stage: str, message: str) -> int:
    """Tell the grader why this stage failed (if the socket still works); the exit code to use."""
    try:
        send(socket.socket(fileno=fd), {"op": "error", "stage": stage, "message": message})
    except Exception:                                   # noqa: BLE001
        pass
    return 70


def _wait_for(pid: int) -> int:
    while True:
        try:
            got, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue
        if got == pid:
            return os.waitstatus_to_exitcode(status)


def child_main(cfg: dict, fd: int) -> None:
    """The fork for one notebook: a new session, then (namespaces) an init process and the kernel."""
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)        # the grader interrupts the group; only the kernel listens
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    if cfg["level"] == "namespaces":
        setup_namespaces(cfg)
        init = os.fork()
        if init == 0:                                   # PID 1 of the new namespace
            try:
                setup_init(cfg)
                kernel = os.fork()
                if kernel == 0:
                    kernel_main(cfg, fd)
                os.close(fd)
                code = _wait_for(kernel)
            except BaseException as e:               # noqa: BLE001
                code = _report_failure(fd, "sandbox", f"{e}")
            os._exit(code if code >= 0 else 128 - code)
        os.close(fd)
        code = _wait_for(init)
        os._exit(code if code >= 0 else 128 - code)
    kernel = os.fork()
    if kernel == 0:
        kernel_main(cfg, fd)
    os.close(fd)
    code = _wait_for(kernel)
    os._exit(code if code >= 0 else 128 - code)


# --- the kernel -----------------------------------------------------------------------------------


def kernel_main(cfg: dict, fd: int) -> None:
    code = 0
    try:
        sock = socket.socket(fileno=fd)
        os.set_inheritable(fd, False)
        if cfg["level"] == "namespaces":
            drop_capabilities()
        if sys.platform.startswith("linux"):
            prctl(PR_SET_NO_NEW_PRIVS, 1)
        apply_limits(cfg["limits"], count_existing=cfg["level"] != "namespaces")
        base = cfg["base"]
        env = dict(cfg["env"])
        for key in ("HOME", "IPYTHONDIR", "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR",
                    "MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "TMPDIR", "TORCH_HOME",
                    "HF_HOME"):
            os.makedirs(env[key], mode=0o700, exist_ok=True)
        work = os.path.join(base, "work")
        os.makedirs(work, mode=0o700, exist_ok=True)
        os.chdir(work)
        os.environ.clear()
        os.environ.update(env)
        import tempfile
        tempfile.tempdir = None                          # the zygote's choice is not this sandbox's
        devnull = os.open(os.devnull, os.O_RDWR)
        for std in (0, 1, 2):
            os.dup2(devnull, std)
        kernel = Kernel(sock, cfg)
        os.register_at_fork(after_in_child=kernel.forked)
        send(sock, {"op": "ready", "level": cfg["level"], "pid": os.getpid()})
        kernel.serve()
    except BaseException as e:                       # noqa: BLE001
        code = _report_failure(fd, "kernel", f"{type(e).__name__}: {e}")
    os._exit(code)


class _Student:
    """Around learner code: SIGINT delivered (as KeyboardInterrupt) with its default handler,
    whatever the notebook did to it; outside, SIGINT is blocked and a late one is discarded, so
    an interrupt never lands in the kernel's own bookkeeping."""

    def __enter__(self):
        signal.signal(signal.SIGINT, signal.default_int_handler)
        self.mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        return self

    def __exit__(self, *exc):
        if signal.SIGINT in self.mask:
            _block_sigint()
        return False


def _block_sigint() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        if signal.SIGINT in signal.sigpending():
            signal.sigtimedwait({signal.SIGINT}, 0)
    except (OSError, AttributeError):
        pass


class _Outside:
    """The kernel's own code inside a learner call (a callback to the grader): SIGINT blocked."""

    def __enter__(self):
        self.mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        return self

    def __exit__(self, *exc):
        signal.pthread_sigmask(signal.SIG_SETMASK, self.mask)
        return False


class Kernel:
    def __init__(self, sock: socket.socket, cfg: dict):
        from IPython.core.interactiveshell import InteractiveShell
        from traitlets.config import Config

        _block_sigint()
        self.sock, self.cfg = sock, cfg
        self.handles: dict[int, object] = {}
        self.forked_child = False
        c = Config()
        c.HistoryManager.enabled = False
        c.InteractiveShell.colors = "nocolor"
        c.InteractiveShell.xmode = "Plain"
        self.shell = InteractiveShell.instance(config=c)
        self.ns = self.shell.user_ns
        self.next_cb = 0

    def forked(self) -> None:
        """A learner's os.fork(): the child must never talk on the grader's channel."""
        self.forked_child = True
        try:
            self.sock.close()
        except OSError:
            pass

    def reply(self, msg: dict, blob: bytes = b"") -> None:
        if self.forked_child:
            os._exit(0)
        with _Outside():
            send(self.sock, msg, blob)

    def register(self, obj) -> int:
        h = len(self.handles) + 1
        self.handles[h] = obj
        return h

    def serve(self, until: int | None = None):
        """Answer the grader's requests; inside a callback, until its answer (`until`) arrives."""
        while True:
            if self.forked_child:
                os._exit(0)
            with _Outside():
                try:
                    msg, blob = recv(self.sock)
                except EOFError:
                    os._exit(0)
            op = msg.get("op")
            if op == "run":
                self.reply(self.run(msg))
            elif op == "eval":
                self.reply(*self.evaluate(msg))
            elif op == "call":
                self.reply(*self.call(msg, blob))
            elif op in ("return", "raise") and until is not None and msg.get("id") == until:
                return msg, blob
            elif op == "quit":
                os._exit(0)

    # -- the notebook's cells
    def run(self, msg: dict) -> dict:
        with _Student():
            try:
                res = self.shell.run_cell(msg["code"], store_history=True)
                err = res.error_before_exec or res.error_in_exec
            except BaseException as e:               # noqa: BLE001 -- KeyboardInterrupt between statements
                err = e
        return {"op": "done", "id": msg["id"], "ok": err is None,
                "ename": type(err).__name__ if err is not None else None,
                "evalue": str(err)[:300] if err is not None else None}

    # -- the grader's questions
    def evaluate(self, msg: dict):
        tensors: dict = {}
        try:
            with _Student():
                value = eval(compile(msg["expr"], "<grader>", "eval"), self.ns)
                node = self.describe(value, tensors)
                blob = _safetensors(tensors)
        except BaseException as e:                   # noqa: BLE001
            return {"op": "value", "id": msg["id"], "raised": type(e).__name__, "message": str(e)[:2000]}, b""
        return {"op": "value", "id": msg["id"], "value": node}, blob

    def describe(self, value, tensors: dict):
        """An argument for a check: a callable stays here (the grader gets a handle), a module
        travels as parameters with a handle for its forward, anything else as data."""
        import torch
        if isinstance(value, torch.nn.Module):
            return encode(value, tensors, self)
        if callable(value):
            return {"t": "callable", "h": self.register(value), "name": _name_of(value)}
        return encode(value, tensors, self)

    def call(self, msg: dict, blob: bytes):
        import torch
        tensors: dict = {}
        hits: set[str] = set()
        undo = []
        try:
            fn = self.handles[msg["h"]]
            args, kwargs = _Unpickler(self, blob).load()
            undo, banned = _watch(msg.get("forbidden", []), hits, [self.ns, getattr(fn, "__globals__", None)])
            with _Student(), torch.set_grad_enabled(bool(msg.get("grad", True))):
                with _TorchRecorder(banned, hits):
                    out = fn(*args, **kwargs)
                _unwatch(undo)
                undo = []
                node = encode(out, tensors, self)
                after = encode([list(args), kwargs], tensors, self, after=True)
                data = _safetensors(tensors)
        except BaseException as e:                   # noqa: BLE001 -- the learner's error, reported
            _unwatch(undo)
            return {"op": "result", "id": msg["id"], "raised": type(e).__name__, "message": str(e)[:2000],
                    "hits": sorted(hits)}, b""
        return {"op": "result", "id": msg["id"], "value": node, "after": after, "hits": sorted(hits)}, data

    def callback(self, h: int, args: tuple, kwargs: dict):
        """The learner called a function that the check passed in: it runs in the grader."""
        with _Outside():
            tensors: dict = {}
            node = encode([list(args), kwargs], tensors, self)
            self.next_cb += 1
            cid = -self.next_cb
            self.reply({"op": "callback", "id": cid, "h": h, "args": node}, _safetensors(tensors))
            msg, blob = self.serve(until=cid)
        if msg["op"] == "raise":
            raise _exception(msg.get("ename", "RuntimeError"), msg.get("message", ""))
        return _Unpickler(self, blob).load()


def _name_of(obj) -> str:
    return str(getattr(obj, "__qualname__", None) or type(obj).__name__)[:200]


def _exception(name: str, message: str) -> BaseException:
    import builtins
    cls = getattr(builtins, str(name), None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message)
        except Exception:                               # noqa: BLE001
            pass
    return RuntimeError(f"{name}: {message}")


class _Unpickler(pickle.Unpickler):
    """The grader's arguments; functions the check passed become callbacks to the grader."""

    def __init__(self, kernel: Kernel, blob: bytes):
        import io
        super().__init__(io.BytesIO(blob))
        self.kernel = kernel

    def persistent_load(self, pid):
        kind, h = pid
        kernel = self.kernel

        def grader_function(*args, **kwargs):
            return kernel.callback(h, args, kwargs)
        return grader_function


def _TorchRecorder(banned: dict, hits: set):
    """Records calls of forbidden torch functions and Tensor methods however they are reached
    (a TorchFunctionMode sees every torch-level call); it never changes what they return."""
    import contextlib
    if not banned:
        return contextlib.nullcontext()
    from torch.overrides import TorchFunctionMode

    class Recorder(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            try:
                name = banned.get(func)
            except TypeError:
                name = None
            if name is not None:
                hits.add(name)
            return func(*args, **(kwargs or {}))
    return Recorder()


def _watch(names: list[str], hits: set, namespaces: list) -> tuple[list, dict]:
    """Wrap each forbidden callable (a dotted name; a module name covers all its functions and
    classes) for the duration of one call, also where the notebook bound it to another name;
    torch builtins are also returned for `_TorchRecorder`."""
    import functools
    import importlib
    undo, swapped = [], {}

    def wrapper_for(obj, name):
        if isinstance(obj, type):
            def init(self, *a, __cls=obj, **k):
                hits.add(name)
                __cls.__init__(self, *a, **k)
            try:
                return type(obj.__name__, (obj,), {"__init__": init, "__module__": obj.__module__})
            except TypeError:
                return None

        def wrapped(*a, **k):
            hits.add(name)
            return obj(*a, **k)
        try:
            return functools.wraps(obj)(wrapped)
        except (AttributeError, TypeError):
            return wrapped

    def swap(owner, attr, obj, name):
        w = swapped.get(id(obj)) or wrapper_for(obj, name)
        if w is None:
            return
        swapped[id(obj)] = w
        try:
            setattr(owner, attr, w)
            undo.append((owner, attr, obj))
        except (AttributeError, TypeError):
            pass

    originals, banned = {}, {}
    for name in names:
        parts = name.split(".")
        target, owner = None, None
        for i in range(len(parts), 0, -1):
            try:
                target = importlib.import_module(".".join(parts[:i]))
            except Exception:                           # noqa: BLE001
                continue
            try:
                for attr in parts[i:]:
                    owner, target = target, getattr(target, attr)
            except AttributeError:
                target = None
            break
        if target is None:
            continue
        if isinstance(target, type(sys)):
            for attr, obj in list(vars(target).items()):
                if callable(obj) and getattr(obj, "__module__", None) == target.__name__:
                    originals[id(obj)] = (obj, f"{name}.{attr}")
                    swap(target, attr, obj, f"{name}.{attr}")
        elif callable(target) and owner is not None:
            originals[id(target)] = (target, name)
            swap(owner, parts[-1], target, name)
            if getattr(target, "__code__", None) is None:
                try:
                    banned[target] = name
                except TypeError:
                    pass
    for ns in namespaces:
        if isinstance(ns, dict):
            for key, value in list(ns.items()):
                if id(value) in originals and originals[id(value)][0] is value:
                    w = swapped.get(id(value))
                    if w is not None:
                        ns[key] = w
                        undo.append((ns, key, value))
    return undo, banned


def _unwatch(undo: list) -> None:
    for owner, attr, obj in reversed(undo):
        try:
            if isinstance(owner, dict):
                owner[attr] = obj
            else:
                setattr(owner, attr, obj)
        except (AttributeError, TypeError):
            pass
    undo.clear()


# --- plain data -----------------------------------------------------------------------------------


def _safetensors(tensors: dict) -> bytes:
    if not tensors:
        return b""
    from safetensors.torch import save
    return save(tensors)


def encode(obj, tensors: dict, kernel: Kernel | None = None, after: bool = False, depth: int = 0):
    """A JSON tree of plain data; tensors go into `tensors` (sent as safetensors). `after`: the
    arguments after a call, for the grader to copy in-place changes back (tensors with their
    .grad, modules' parameters and buffers); what cannot travel is skipped, not an error."""
    import numpy as np
    import torch
    if depth > PARAM_MAX_DEPTH:
        raise ValueError("the value is nested too deeply to send to the grader")
    if obj is None or isinstance(obj, bool):
        return obj
    if isinstance(obj, str):
        return obj if type(obj) is str else str.__getitem__(obj, slice(None))
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, complex):
        return {"t": "complex", "v": [obj.real, obj.imag]}
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if t.layout != torch.strided:
            t = t.to_dense()
        if t.is_quantized:
            t = t.dequantize()
        t = torch.Tensor.as_subclass(t, torch.Tensor).cpu()
        cplx = t.is_complex()
        if cplx:
            t = torch.view_as_real(t)
        key = f"t{len(tensors)}"
        tensors[key] = t.contiguous().clone()
        node = {"t": "tensor", "k": key, "complex": cplx, "rg": bool(obj.requires_grad)}
        if after and obj.grad is not None:
            node["grad"] = encode(obj.grad, tensors, kernel, after, depth + 1)
        return node
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biufc":
            raise TypeError(f"cannot send a numpy array of dtype {obj.dtype} to the grader")
        t = torch.from_numpy(np.ascontiguousarray(obj))
        cplx = t.is_complex()
        if cplx:
            t = torch.view_as_real(t)
        key = f"t{len(tensors)}"
        tensors[key] = t.clone()
        return {"t": "ndarray", "k": key, "complex": cplx, "dtype": obj.dtype.str}
    if isinstance(obj, np.generic):
        v = obj.item()
        if isinstance(v, complex):
            v = [v.real, v.imag]
        elif not isinstance(v, (bool, int, float)):
            raise TypeError(f"cannot send a numpy {type(obj).__name__} to the grader")
        return {"t": "npscalar", "dtype": obj.dtype.str, "v": v}
    if isinstance(obj, torch.Size):
        return {"t": "size", "v": [int(x) for x in obj]}
    if isinstance(obj, torch.dtype):
        return {"t": "dtype", "v": str(obj).removeprefix("torch.")}
    if isinstance(obj, tuple):
        return {"t": "tuple", "v": [encode(x, tensors, kernel, after, depth + 1) for x in obj]}
    if isinstance(obj, list):
        return [encode(x, tensors, kernel, after, depth + 1) for x in obj]
    if isinstance(obj, dict):
        return {"t": "dict", "v": [[encode(k, tensors, kernel, after, depth + 1),
                                    encode(v, tensors, kernel, after, depth + 1)] for k, v in obj.items()]}
    if isinstance(obj, torch.nn.Module):
        classes = [f"{c.__module__}.{c.__qualname__}" for c in type(obj).__mro__
                   if isinstance(c, type) and issubclass(c, torch.nn.Module)]
        node = {"t": "module", "name": type(obj).__name__[:100], "classes": classes[:50],
                "training": bool(obj.training),
                "params": {n: encode(p, tensors, kernel, after, depth + 1)
                           for n, p in obj._parameters.items() if p is not None},
                "buffers": {n: encode(b, tensors, kernel, after, depth + 1)
                            for n, b in obj._buffers.items() if b is not None},
                "children": {n: encode(m, tensors, kernel, after, depth + 1)
                             for n, m in obj._modules.items() if m is not None}}
        if kernel is not None and not after:
            node["h"] = kernel.register(obj)
        return node
    if after:
        return {"t": "skip"}
    if callable(obj) and kernel is not None:
        return {"t": "callable", "h": kernel.register(obj), "name": _name_of(obj)}
    raise TypeError(f"cannot send a {type(obj).__name__} to the grader: return tensors, numbers, strings, "
                    "bools, None, or lists/tuples/dicts of those")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "zygote":
        raise SystemExit("usage: python -I _sandbox_kernel.py zygote CONFIG_JSON")
    zygote_main(json.loads(sys.argv[2]))
