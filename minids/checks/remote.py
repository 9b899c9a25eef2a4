"""The grader's side of a remote call: what a check receives instead of the learner's function.

`RemoteFunction` is a proxy: the genuine check runs in the grader's process and every call of the
proxy runs the learner's function in the notebook's sandbox (arguments pickled by the grader),
and returns plain data only: tensors, numpy arrays, numbers, bools, strings, None, and
lists/tuples/dicts of those, decoded from JSON and safetensors bytes. Nothing the notebook's
process writes is ever unpickled. A returned `nn.Module` comes back as a skeleton: an instance of
a subclass of its (minids or torch.nn) class with the same parameters and buffers, whose forward
is again a remote call. In-place changes the learner's function makes to its arguments (tensors,
their .grad, a module's parameters and buffers, list and dict items) are copied back onto the
check's own objects, so a check can test a function that updates its arguments.
"""

from __future__ import annotations

import builtins
import re
import sys

import torch
from torch import nn

from .sandbox import KernelDied, KernelTimeout, ProtocolError, dumps_for_kernel

MAX_DEPTH = 80
SKIP = object()
_TRUSTED_MODULES = ("minids.", "torch.nn.")


def load_tensors(blob: bytes) -> dict:
    if not blob:
        return {}
    from safetensors.torch import load
    try:
        return load(blob)
    except Exception as e:                              # noqa: BLE001 -- any malformed bytes
        raise ProtocolError(f"tensors that do not parse ({type(e).__name__})") from None


def remote_exception(name, message) -> Exception:
    """The learner's exception, re-raised in the grader as the same built-in type (so a check
    still tells NotImplementedError from a RuntimeError), else a RuntimeError naming it."""
    name, message = str(name)[:100], str(message)[:2000]
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception) and not issubclass(cls, (SystemExit, KeyboardInterrupt)):
        try:
            return cls(message)
        except Exception:                               # noqa: BLE001 -- constructors with other signatures
            pass
    return RuntimeError(f"{name}: {message}")


def decode(node, tensors: dict, kernel=None, depth: int = 0):
    """Plain data from the notebook's JSON tree; anything unexpected is a ProtocolError."""
    if depth > MAX_DEPTH:
        raise ProtocolError("data nested too deeply")
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if isinstance(node, list):
        return [decode(x, tensors, kernel, depth + 1) for x in node]
    if not isinstance(node, dict):
        raise ProtocolError("unexpected data")
    t = node.get("t")
    try:
        if t in ("tensor", "ndarray"):
            x = tensors[node["k"]]
            if node.get("complex"):
                x = torch.view_as_complex(x)
            if t == "ndarray":
                try:
                    return x.numpy()
                except (TypeError, RuntimeError):
                    return x
            return x
        if t == "npscalar":
            import numpy as np
            dtype = str(node["dtype"])
            if not re.fullmatch(r"[<>|=]?[biufc]\d{1,2}", dtype):
                raise ProtocolError("an odd numpy scalar")
            v = node["v"]
            if isinstance(v, list):
                v = complex(float(v[0]), float(v[1]))
            if not isinstance(v, (bool, int, float, complex)):
                raise ProtocolError("an odd numpy scalar")
            return np.dtype(dtype).type(v)
        if t == "complex":
            return complex(float(node["v"][0]), float(node["v"][1]))
        if t == "size":
            return torch.Size([int(x) for x in node["v"]])
        if t == "dtype":
            d = getattr(torch, str(node["v"]), None)
            if not isinstance(d, torch.dtype):
                raise ProtocolError("an odd dtype")
            return d
        if t == "tuple":
            return tuple(decode(x, tensors, kernel, depth + 1) for x in node["v"])
        if t == "dict":
            return {decode(k, tensors, kernel, depth + 1): decode(v, tensors, kernel, depth + 1) for k, v in node["v"]}
        if t == "module":
            return _skeleton(node, tensors, kernel, depth)
        if t == "callable":
            if kernel is None:
                return SKIP
            return RemoteFunction(kernel, int(node["h"]), str(node.get("name", "function"))[:200])
        if t == "skip":
            return SKIP
    except ProtocolError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError):
        raise ProtocolError(f"malformed {t!r} data") from None
    raise ProtocolError(f"unknown data kind {t!r}")


_SKELETONS: dict = {}


def _trusted_class(names) -> type:
    for qual in names if isinstance(names, list) else []:
        mod, _, name = str(qual).rpartition(".")
        if not mod.startswith(_TRUSTED_MODULES) and mod != "torch.nn":
            continue
        obj = sys.modules.get(mod)
        for part in name.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, type) and issubclass(obj, nn.Module):
            return obj
    return nn.Module


def _remote_forward(self, *args, **kwargs):
    fn = self.__dict__.get("_minids_remote")
    if fn is None:
        raise RuntimeError("this module was returned by the learner's code; it has no forward here")
    return fn(*args, **kwargs)


def _skeleton(node: dict, tensors: dict, kernel, depth: int) -> nn.Module:
    base = _trusted_class(node.get("classes"))
    name = str(node.get("name", "Module"))
    if not name.isidentifier() or len(name) > 100:
        name = "LearnerModule"
    key = (base, name)
    cls = _SKELETONS.get(key) or type(name, (base,), {"forward": _remote_forward, "__module__": "learner"})
    if len(_SKELETONS) < 1000:
        _SKELETONS[key] = cls
    obj = cls.__new__(cls)
    nn.Module.__init__(obj)
    obj.training = bool(node.get("training", True))
    for n, p in dict(node.get("params", {})).items():
        _check_name(n)
        t = decode(p, tensors, kernel, depth + 1)
        if not isinstance(t, torch.Tensor):
            raise ProtocolError("a parameter that is not a tensor")
        obj._parameters[n] = nn.Parameter(t, requires_grad=bool(p.get("rg", True)) and t.is_floating_point())
    for n, b in dict(node.get("buffers", {})).items():
        _check_name(n)
        t = decode(b, tensors, kernel, depth + 1)
        if not isinstance(t, torch.Tensor):
            raise ProtocolError("a buffer that is not a tensor")
        obj._buffers[n] = t
    for n, c in dict(node.get("children", {})).items():
        _check_name(n)
        if not (isinstance(c, dict) and c.get("t") == "module"):
            raise ProtocolError("a child module that is not a module")
        obj._modules[n] = _skeleton(c, tensors, kernel, depth + 1)
    if kernel is not None and "h" in node:
        obj.__dict__["_minids_remote"] = RemoteFunction(kernel, int(node["h"]), f"{name}.forward")
    return obj


def _check_name(n) -> None:
    if not isinstance(n, str) or not n or "." in n or len(n) > 200:
        raise ProtocolError("an odd parameter name")


def apply_after(orig, new, depth: int = 0) -> None:
    """Copy the learner's in-place changes of an argument back onto the check's object."""
    if new is SKIP or depth > MAX_DEPTH:
        return
    if isinstance(orig, torch.Tensor) and isinstance(new, torch.Tensor):
        _apply_tensor(orig, new)
    elif isinstance(orig, nn.Module) and isinstance(new, nn.Module):
        for n, p in orig._parameters.items():
            if p is not None and n in new._parameters:
                _apply_tensor(p, new._parameters[n])
        for n, b in orig._buffers.items():
            if b is not None and n in new._buffers:
                _apply_tensor(b, new._buffers[n])
        for n, m in orig._modules.items():
            if m is not None and n in new._modules:
                apply_after(m, new._modules[n], depth + 1)
    elif isinstance(orig, list) and isinstance(new, list):
        if len(orig) == len(new):
            for i, (o, n) in enumerate(zip(orig, new, strict=True)):
                if _immutable(o) and _immutable(n) and o != n:
                    orig[i] = n
                else:
                    apply_after(o, n, depth + 1)
        elif all(x is not SKIP and not isinstance(x, RemoteFunction) for x in new):
            orig[:] = new
    elif isinstance(orig, tuple) and isinstance(new, tuple) and len(orig) == len(new):
        for o, n in zip(orig, new, strict=True):
            apply_after(o, n, depth + 1)
    elif isinstance(orig, dict) and isinstance(new, dict):
        for k, n in new.items():
            if k in orig:
                if _immutable(orig[k]) and _immutable(n) and orig[k] != n:
                    orig[k] = n
                else:
                    apply_after(orig[k], n, depth + 1)
            elif n is not SKIP and not isinstance(n, RemoteFunction):
                orig[k] = n


def _immutable(x) -> bool:
    return x is None or isinstance(x, (bool, int, float, complex, str))


def _apply_tensor(orig: torch.Tensor, new: torch.Tensor) -> None:
    """New values in place; a gradient the learner's code left (e.g. by backward) as .grad."""
    with torch.no_grad():
        if orig.shape == new.shape and orig.dtype == new.dtype and not _same(orig, new):
            orig.copy_(new)
    grad = getattr(new, "_minids_grad", None)
    if grad is None and isinstance(new, nn.Parameter):
        grad = new.grad
    if orig.is_leaf and isinstance(grad, torch.Tensor) and grad.shape == orig.shape:
        orig.grad = grad.to(orig.dtype)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    try:
        return bool(torch.equal(a, b)) or bool(((a == b) | (a.isnan() & b.isnan())).all())
    except (RuntimeError, TypeError):
        return False


def decode_after(node, tensors: dict):
    """The arguments after a call: like `decode`, with each tensor's .grad attached."""
    def walk(n, depth=0):
        if depth > MAX_DEPTH:
            raise ProtocolError("data nested too deeply")
        if isinstance(n, list):
            return [walk(x, depth + 1) for x in n]
        if isinstance(n, dict) and n.get("t") == "tensor":
            t = decode(n, tensors)
            if isinstance(n.get("grad"), dict):
                t = t.clone()
                t._minids_grad = decode(n["grad"], tensors)
            return t
        if isinstance(n, dict) and n.get("t") == "module":
            m = _skeleton(n, tensors, None, depth)
            _attach_grads(m, n, tensors)
            return m
        if isinstance(n, dict) and n.get("t") == "tuple":
            return tuple(walk(x, depth + 1) for x in n["v"])
        if isinstance(n, dict) and n.get("t") == "dict":
            return {decode(k, tensors): walk(v, depth + 1) for k, v in n["v"]}
        return decode(n, tensors)
    return walk(node)


def _attach_grads(m: nn.Module, node: dict, tensors: dict) -> None:
    for n, p in dict(node.get("params", {})).items():
        if isinstance(p, dict) and isinstance(p.get("grad"), dict) and n in m._parameters:
            m._parameters[n].grad = decode(p["grad"], tensors)
    for n, c in dict(node.get("children", {})).items():
        if n in m._modules and isinstance(c, dict):
            _attach_grads(m._modules[n], c, tensors)


class RemoteFunction:
    """What a check gets for the learner's function: calling it runs the function in the
    notebook's sandbox and returns plain data."""

    def __init__(self, kernel, handle: int, name: str):
        self.kernel, self.handle, self.__name__ = kernel, handle, name
        self.__qualname__ = name

    def __repr__(self) -> str:
        return f"<learner's {self.__name__}>"

    def __call__(self, *args, **kwargs):
        k = self.kernel
        blob = dumps_for_kernel(k, (args, kwargs))
        try:
            m, b = k.request({"op": "call", "h": self.handle, "grad": torch.is_grad_enabled(),
                              "forbidden": list(k.forbidden)}, blob, "result")
        except KernelTimeout as e:
            raise TimeoutError(f"your code {e}") from None
        except (KernelDied, ProtocolError) as e:
            raise RuntimeError(f"the notebook's process failed: {e}") from None
        hits = m.get("hits")
        if isinstance(hits, list):
            k.hits.update(str(h)[:200] for h in hits[:50])
        if "raised" in m:
            raise remote_exception(m.get("raised"), m.get("message", ""))
        tensors = load_tensors(b)
        try:
            value = decode(m.get("value"), tensors, k)
            after = decode_after(m.get("after"), tensors)
        except ProtocolError as e:
            k.kill()
            raise RuntimeError(f"the notebook's process failed: {e}") from None
        if isinstance(after, list) and len(after) == 2 and isinstance(after[0], list) and isinstance(after[1], dict):
            apply_after(list(args), after[0])
            apply_after(kwargs, after[1])
        if value is SKIP:
            raise TypeError("your function returned something that cannot be checked")
        return value


def serve_callback(kernel, m: dict, blob: bytes) -> None:
    """The learner's code called a function the check passed in: run it here."""
    fn = kernel.grader_callables.get(m.get("h"))
    try:
        if fn is None:
            raise RuntimeError("no such function")
        tensors = load_tensors(blob)
        args = decode(m.get("args"), tensors, kernel)
        if not (isinstance(args, list) and len(args) == 2 and isinstance(args[0], list) and isinstance(args[1], dict)):
            raise ProtocolError("malformed call")
        out = fn(*args[0], **{str(k): v for k, v in args[1].items()})
        reply, data = {"op": "return", "id": m["id"]}, dumps_for_kernel(kernel, out)
    except ProtocolError:
        kernel.kill()
        raise
    except Exception as e:                              # noqa: BLE001 -- the error goes back to the learner's code
        reply, data = {"op": "raise", "id": m["id"], "ename": type(e).__name__, "message": str(e)[:2000]}, b""
    kernel._send(reply, data)
