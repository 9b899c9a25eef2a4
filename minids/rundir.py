"""A training run's folder (out_dir) and what it records: the folder checked and locked before
anything is built; metrics.jsonl, one strict JSON line per logged step or eval, cut back on
resume. Kept apart from minids.train because none of it is training: it is the bookkeeping that
lets a run be stopped, resumed, refused or plotted safely.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
from pathlib import Path

from . import distributed
from .checkpoint import CHECKPOINT
from .config import TrainConfig
from .distributed import World
from .files import atomic_write_bytes, remove_stale_temps
from .moe import max_violation

METRICS = "metrics.jsonl"
LOCK = ".minids.lock"


def prepare_out_dir(tc: TrainConfig, resume: bool, overwrite: bool, world: World,
                    held: contextlib.ExitStack | None = None) -> Path | None:
    """Check out_dir before anything is built, and create it. A folder that already holds a run
    (a checkpoint or metrics) is continued only with `resume`, replaced only with `overwrite`
    (its checkpoint and metrics are deleted now), and otherwise refused: a second run never
    silently replaces the first. With `held`, rank 0 also locks the folder for the run (a lock
    the system drops when the process ends, even killed): a run started meanwhile is refused."""
    if tc.out_dir is None:
        if resume:
            raise FileNotFoundError("resume=True but out_dir=None: there is no checkpoint to resume from")
        return None
    if not str(tc.out_dir).strip():
        raise ValueError("out_dir='' must name a folder (out_dir=None writes nothing)")
    if resume and overwrite:
        raise ValueError("resume=True continues the run in out_dir, overwrite=True replaces it: choose one")
    out = Path(tc.out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir={tc.out_dir!r} is a file, not a folder")
    ckpt, metrics = out / CHECKPOINT, out / METRICS
    if resume and not ckpt.exists():
        raise FileNotFoundError(f"resume=True but there is no checkpoint at {ckpt}")
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if held is not None:
            held.enter_context(lock_folder(out))
    existing = [p.name for p in (ckpt, metrics) if p.exists()]
    if existing and not resume and not overwrite:
        raise ValueError(f"out_dir={tc.out_dir!r} already holds a run ({', '.join(existing)}): continue it with "
                         "--resume (resume=True), replace it with --overwrite (overwrite=True), or pick another "
                         "out_dir")
    if world.is_main:
        if overwrite:
            for p in (ckpt, metrics):
                p.unlink(missing_ok=True)
        remove_stale_temps(ckpt)                       # left by a write that was killed
    return out


@contextlib.contextmanager
def lock_folder(folder: Path):
    """An exclusive lock on folder/.minids.lock for as long as the context lasts (POSIX flock;
    where fcntl does not exist, e.g. on Windows, no lock)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    f = open(folder / LOCK, "a")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
            f.close()
            raise ValueError(f"out_dir={str(folder)!r} is in use by another training run (it holds the lock "
                             f"{folder / LOCK}); wait for it to end, or pick another out_dir") from None
        # any other error: a file system without locks, the run goes on unlocked
    try:
        yield
    finally:
        f.close()


def open_metrics(out: Path, start: int, resume: bool):
    """metrics.jsonl for appending. On resume, first cut it back to what the checkpoint at `start`
    had seen (step records before `start`, evals up to `start`) and drop a line cut by a crash,
    so the steps the resumed run repeats are not recorded twice."""
    path = out / METRICS
    if resume and path.exists():
        keep = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("iter"), int) and (
                    rec["iter"] < start or (rec.get("eval") and rec["iter"] <= start)):
                keep.append(line + "\n")
        atomic_write_bytes(path, "".join(keep).encode())
    return open(path, "a", encoding="utf-8")


def json_record(rec: dict) -> str:
    """One line of strict JSON: NaN and inf (which json.dumps would write as NaN / Infinity, and
    strict parsers reject) become null."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    return json.dumps(clean(rec), allow_nan=False)


def step_record(it: int, out, lr: float, tps: float, grad_norm, loads: list, world: World) -> dict:
    """What a logged step reports: the losses (means over the ranks' slices: the global batch's),
    lr, tokens/s, the gradient norm, and per MoE layer MaxVio and this rank's tokens per expert."""
    names = [k for k in ("loss", "main_loss", "mtp_loss", "aux_loss") if getattr(out, k) is not None]
    vals = distributed.mean_over_ranks([getattr(out, k) for k in names], world)
    rec = {"iter": it, **dict(zip(names[:2], vals[:2], strict=True)), "lr": lr, "tokens_per_s": tps}
    rec.update(zip(names[2:], vals[2:], strict=True))
    if grad_norm is not None:
        rec["grad_norm"] = float(grad_norm)
    if loads:
        rec["max_vio"] = [max_violation(ld) for ld in loads]
        rec["expert_load"] = [ld.tolist() for ld in loads]
    return rec
