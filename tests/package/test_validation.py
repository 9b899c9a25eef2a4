"""minids.validation: the rule grammar that config and flops/cost share, and its error messages."""

import math
from types import SimpleNamespace

import pytest

from minids.validation import check, require


@pytest.mark.parametrize("value, rule", [
    (1, "int >= 1"), (0, "int >= 0"), (2.5, "number > 0"), (0, "number in [0, 1]"), (1, "number in (0, 1]"),
    (4, "even int >= 2"), ("absorb", "one of naive, absorb"), (None, "int >= 1 or None"), (3, "int >= 1 or None"),
])
def test_values_that_pass(value, rule):
    require("x", value, rule)


@pytest.mark.parametrize("value, rule, message", [
    (0, "int >= 1", "x=0 must be an integer >= 1"),
    (1.0, "int >= 1", "x=1.0 must be an integer"),
    (True, "int >= 0", "x=True must be an integer"),                   # a bool is not a count
    (True, "number >= 0", "x=True must be a number"),
    (math.nan, "number >= 0", "x=nan must be a number"),               # nor is nan or inf a size
    (math.inf, "number >= 0", "x=inf must be a number"),
    (0.0, "number > 0", "x=0.0 must be a number > 0"),
    (0, "number in (0, 1]", r"x=0 must be a number in \(0, 1\]"),
    (1.5, "number in [0, 1]", r"x=1.5 must be a number in \[0, 1\]"),
    (1, "number in [0, 1)", r"x=1 must be a number in \[0, 1\)"),
    (3, "even int >= 2; RoPE rotates pairs", r"x=3 must be an even integer \(RoPE rotates pairs\)"),
    ("fast", "one of naive, absorb, reexpand", "x='fast' must be 'naive', 'absorb' or 'reexpand'"),
    (0, "int >= 1 or None", "x=0 must be an integer >= 1"),
])
def test_errors_name_the_value_and_the_rule(value, rule, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        require("x", value, rule)


def test_bounds_and_divisors_may_name_other_fields():
    obj = SimpleNamespace(n=8, k=9, g=3)
    with pytest.raises(ValueError, match=r"^k=9 must be an integer in \[1, n=8\]$"):
        check(obj, {"n": "int >= 1", "k": "int in [1, n]"})
    with pytest.raises(ValueError, match="^g=3 must divide n=8$"):
        check(obj, {"g": "int in [1, n] dividing n"})
    check(SimpleNamespace(n=8, g=4), {"n": "int >= 1", "g": "int in [1, n] dividing n"})


def test_a_malformed_rule_is_an_error_not_a_pass():
    with pytest.raises(ValueError, match="bad rule"):
        require("x", 1, "integer at least 1")
