"""One way to check a value: a rule written in words, and the same words in the error.

    require("seq_len", 0, "int >= 1")       ValueError: seq_len=0 must be an integer >= 1
    require("mfu", 1.5, "number in (0, 1]")  ValueError: mfu=1.5 must be a number in (0, 1]

Rules: "int" or "number" (finite; bools are neither), optionally "even", then ">= LO", "> LO" or
"in [LO, HI]" (a round bracket leaves that end open); "one of a, b, c" for strings; "... or None".
"... dividing NAME" asks for a divisor of another value; "; why" adds a reason to the error. A
bound or divisor may name another field: `check(obj, rules)` reads names from `obj`, and the
error shows their values:
    num_experts_per_tok=9 must be an integer in [1, n_routed_experts=8]
"""

from __future__ import annotations

import math
import re
from typing import Any

_RULE = re.compile(r"(?P<even>even )?(?P<kind>int|number)"
                   r"(?: (?P<op>>=|>) (?P<lo>\S+)| in (?P<lb>[\[(])(?P<lo2>[^,]+), (?P<hi>[^\])]+)(?P<rb>[\])]))?"
                   r"(?: dividing (?P<div>\w+))?$")


def _bound(text: str, env: dict) -> tuple[float, str]:
    """A bound's value and how the error shows it: 8 -> '8', n_routed_experts -> 'n_routed_experts=8'."""
    if text in env:
        return env[text], f"{text}={env[text]}"
    return float(text), text


def require(name: str, value: Any, rule: str, env: dict | None = None) -> None:
    """Raise ValueError(f"{name}={value!r} must be ...") unless `value` satisfies `rule`."""
    rule, _, why = rule.partition("; ")
    try:
        _require(name, value, rule, env or {})
    except ValueError as e:
        raise ValueError(f"{e} ({why})" if why else str(e)) from None


def _require(name: str, value: Any, rule: str, env: dict) -> None:
    if rule.endswith(" or None"):
        if value is None:
            return
        rule = rule[: -len(" or None")]
    if rule.startswith("one of "):
        choices = [c.strip() for c in rule[len("one of "):].split(",")]
        if value not in choices:
            names = [repr(c) for c in choices]
            raise ValueError(f"{name}={value!r} must be " + " or ".join([", ".join(names[:-1]), names[-1]]))
        return
    m = _RULE.match(rule)
    if m is None:
        raise ValueError(f"bad rule {rule!r} for {name}")
    integer = m["kind"] == "int"
    kind = ("an even integer" if m["even"] else "an integer") if integer else "a number"
    ok_type = (isinstance(value, int) if integer else isinstance(value, (int, float)) and math.isfinite(value))
    if isinstance(value, bool) or not ok_type:
        raise ValueError(f"{name}={value!r} must be {kind}")
    if m["op"]:
        lo, lo_s = _bound(m["lo"], env)
        if not (value >= lo if m["op"] == ">=" else value > lo):
            raise ValueError(f"{name}={value!r} must be {kind} {m['op']} {lo_s}")
    elif m["lb"]:
        (lo, lo_s), (hi, hi_s) = _bound(m["lo2"], env), _bound(m["hi"], env)
        if not ((value >= lo if m["lb"] == "[" else value > lo) and (value <= hi if m["rb"] == "]" else value < hi)):
            raise ValueError(f"{name}={value!r} must be {kind} in {m['lb']}{lo_s}, {hi_s}{m['rb']}")
    if m["even"] and value % 2:
        raise ValueError(f"{name}={value!r} must be {kind}")
    if m["div"] and env[m["div"]] % value:
        raise ValueError(f"{name}={value!r} must divide {m['div']}={env[m['div']]}")


def check(obj: Any, rules: dict[str, str]) -> None:
    """Every field of `obj` named in `rules` against its rule, in order (so a bound may name a
    field checked before it)."""
    env = vars(obj)
    for name, rule in rules.items():
        require(name, env[name], rule, env)
