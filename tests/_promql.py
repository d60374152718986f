"""A small PromQL evaluator over scrapes taken at virtual times, for testing what alert rules mean.

promtool is a Go binary no Python package ships, so the tests own this
evaluator for the subset of PromQL riprap's shipped rules and dashboard use:
vector selectors with label matchers, range selectors, ``rate``,
``increase``, ``deriv``, ``clamp_min``, ``histogram_quantile``, ``sum``/
``max``/``min`` ``by``, arithmetic, comparisons and ``and``/``unless``, plus
a rule's ``for:``. ``rate`` and ``increase`` extrapolate to the window's
edges as Prometheus does. Anything outside the subset raises, so a rule
that grows beyond it fails its test instead of passing untested.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from collections.abc import Callable

Labels = tuple[tuple[str, str], ...]
"""A series' labels, sorted, without its name."""
Vector = dict[Labels, float]
Ranges = dict[Labels, list[tuple[float, float]]]
Value = float | Vector

LOOKBACK = 300.0
"""Seconds an instant selector looks back for a sample (Prometheus' default)."""

_TOKEN = re.compile(
    r"""\s*(?:
    (?P<duration>\d+[smhd])(?![a-zA-Z0-9_])
  | (?P<number>\d+(?:\.\d+)?(?:e-?\d+)?)(?![a-zA-Z0-9_.])
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>=~|!~|!=|>=|<=|==|[-+*/(){}\[\],=<>])
)""",
    re.VERBOSE,
)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def tokens(expr: str) -> list[tuple[str, str]]:
    """``(kind, text)`` tokens of an expression."""
    out: list[tuple[str, str]] = []
    pos = 0
    expr = expr.strip()
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None or match.end() == pos:
            raise ValueError(f"cannot read {expr[pos:]!r}")
        kind = match.lastgroup
        assert kind is not None
        out.append((kind, match.group(kind)))
        pos = match.end()
    return out


@dataclass
class Scrapes:
    """Series from exposition texts, each taken at a virtual time (seconds)."""

    series: dict[str, dict[Labels, list[tuple[float, float]]]] = field(default_factory=dict)
    times: list[float] = field(default_factory=list)

    def add(self, at: float, text: str) -> None:
        """Record one scrape taken at ``at``."""
        self.times.append(at)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = tuple(sorted(sample.labels.items()))
                by_labels = self.series.setdefault(sample.name, {})
                by_labels.setdefault(labels, []).append((at, float(sample.value)))


@dataclass(frozen=True)
class Rule:
    """An alerting rule: its name, expression and ``for:`` in seconds."""

    name: str
    expr: str
    for_seconds: float = 0.0


def parse_duration(text: str) -> float:
    """``5m`` as 300.0."""
    return float(text[:-1]) * _SECONDS[text[-1]]


def evaluate(expr: str, scrapes: Scrapes, at: float) -> Value:
    """The value of ``expr`` at time ``at``."""
    return _Parser(tokens(expr), scrapes, at).parse()


def firing(rule: Rule, scrapes: Scrapes, at: float | None = None) -> set[Labels]:
    """Label sets for which ``rule`` fires at ``at`` (default: the last scrape).

    The rule is evaluated at every scrape time up to ``at``; an element fires
    once it has been in the result at every evaluation for ``for_seconds``.
    """
    end = scrapes.times[-1] if at is None else at
    active: dict[Labels, float] = {}
    for t in sorted(time for time in scrapes.times if time <= end):
        result = evaluate(rule.expr, scrapes, t)
        if not isinstance(result, dict):
            raise TypeError(f"{rule.name}: the expression is a scalar, not a vector")
        active = {labels: active.get(labels, t) for labels in result}
    return {labels for labels, since in active.items() if end - since >= rule.for_seconds}


_AGGREGATIONS: dict[str, Callable[[list[float]], float]] = {
    "sum": math.fsum,
    "max": max,
    "min": min,
    "count": lambda values: float(len(values)),
}
_COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}
_ARITHMETIC: dict[str, Callable[[float, float], float]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b if b else (math.nan if a == 0 else math.copysign(math.inf, a)),
}


class _Parser:
    """Recursive descent over the tokens, evaluating as it goes."""

    def __init__(self, toks: list[tuple[str, str]], scrapes: Scrapes, at: float) -> None:
        self.toks = toks
        self.pos = 0
        self.scrapes = scrapes
        self.at = at

    def parse(self) -> Value:
        value = self._set_op()
        if self.pos != len(self.toks):
            raise ValueError(f"unexpected {self.toks[self.pos][1]!r}")
        return value

    def _peek(self) -> str | None:
        return self.toks[self.pos][1] if self.pos < len(self.toks) else None

    def _take(self, expected: str | None = None) -> str:
        if self.pos >= len(self.toks):
            raise ValueError("unexpected end of expression")
        text = self.toks[self.pos][1]
        if expected is not None and text != expected:
            raise ValueError(f"expected {expected!r}, found {text!r}")
        self.pos += 1
        return text

    def _set_op(self) -> Value:
        left = self._comparison()
        while self._peek() in ("and", "unless"):
            op = self._take()
            right = self._comparison()
            if not isinstance(left, dict) or not isinstance(right, dict):
                raise TypeError(f"{op} needs two vectors")
            keep = op == "and"
            left = {labels: v for labels, v in left.items() if (labels in right) == keep}
        return left

    def _comparison(self) -> Value:
        left = self._additive()
        while self._peek() in _COMPARISONS:
            op = _COMPARISONS[self._take()]
            right = self._additive()
            left = _filter(left, right, op)
        return left

    def _additive(self) -> Value:
        left = self._multiplicative()
        while self._peek() in ("+", "-"):
            op = _ARITHMETIC[self._take()]
            left = _combine(left, self._multiplicative(), op)
        return left

    def _multiplicative(self) -> Value:
        left = self._unary()
        while self._peek() in ("*", "/"):
            op = _ARITHMETIC[self._take()]
            left = _combine(left, self._unary(), op)
        return left

    def _unary(self) -> Value:
        kind, text = self.toks[self.pos]
        if kind == "number":
            self.pos += 1
            return float(text)
        if text == "(":
            self._take("(")
            value = self._set_op()
            self._take(")")
            return value
        if kind != "name":
            raise ValueError(f"unexpected {text!r}")
        if text in _AGGREGATIONS:
            return self._aggregation()
        if self.pos + 1 < len(self.toks) and self.toks[self.pos + 1][1] == "(":
            return self._function()
        vector = self._selector()
        if not isinstance(vector, dict) or self._peek() == "[":
            raise ValueError(f"a range selector is only valid inside a function: {text}")
        return vector

    def _labels_clause(self) -> tuple[str, ...] | None:
        if self._peek() != "by":
            if self._peek() == "without":
                raise ValueError("without(...) is not supported")
            return None
        self._take("by")
        self._take("(")
        names: list[str] = []
        while self._peek() != ")":
            names.append(self._take())
            if self._peek() == ",":
                self._take(",")
        self._take(")")
        return tuple(names)

    def _aggregation(self) -> Vector:
        fn = _AGGREGATIONS[self._take()]
        by = self._labels_clause()
        self._take("(")
        inner = self._set_op()
        self._take(")")
        by = by if by is not None else self._labels_clause()
        if not isinstance(inner, dict):
            raise TypeError("aggregation over a scalar")
        groups: dict[Labels, list[float]] = {}
        for labels, value in inner.items():
            key = tuple((k, v) for k, v in labels if by is not None and k in by)
            groups.setdefault(key, []).append(value)
        return {key: fn(values) for key, values in groups.items()}

    def _function(self) -> Value:
        name = self._take()
        self._take("(")
        if name in ("rate", "increase", "deriv"):
            ranges, window = self._range()
            self._take(")")
            return _over_range(name, ranges, window, self.at)
        if name == "clamp_min":
            vector = self._set_op()
            self._take(",")
            low = self._set_op()
            self._take(")")
            if not isinstance(vector, dict) or not isinstance(low, float):
                raise TypeError("clamp_min(vector, scalar)")
            return {labels: max(value, low) for labels, value in vector.items()}
        if name == "histogram_quantile":
            q = self._set_op()
            self._take(",")
            buckets = self._set_op()
            self._take(")")
            if not isinstance(q, float) or not isinstance(buckets, dict):
                raise TypeError("histogram_quantile(scalar, vector)")
            return _histogram_quantile(q, buckets)
        raise ValueError(f"function {name}() is not supported")

    def _range(self) -> tuple[Ranges, float]:
        selected = self._selector()
        self._take("[")
        kind, text = self.toks[self.pos]
        if kind != "duration":
            raise ValueError(f"expected a duration, found {text!r}")
        self.pos += 1
        self._take("]")
        window = parse_duration(text)
        assert isinstance(selected, _Selection)
        ranges = {
            labels: [(t, v) for t, v in samples if self.at - window < t <= self.at]
            for labels, samples in selected.series.items()
        }
        return ranges, window

    def _selector(self) -> Vector | _Selection:
        name = self._take()
        matchers: list[tuple[str, str, str]] = []
        if self._peek() == "{":
            self._take("{")
            while self._peek() != "}":
                label = self._take()
                op = self._take()
                value = _unquote(self._take())
                matchers.append((label, op, value))
                if self._peek() == ",":
                    self._take(",")
            self._take("}")
        series = {
            labels: samples
            for labels, samples in self.scrapes.series.get(name, {}).items()
            if all(_matches(dict(labels).get(k, ""), op, v) for k, op, v in matchers)
        }
        if self._peek() == "[":
            return _Selection(series)
        vector: Vector = {}
        for labels, samples in series.items():
            recent = [(t, v) for t, v in samples if self.at - LOOKBACK < t <= self.at]
            if recent:
                vector[labels] = recent[-1][1]
        return vector


@dataclass
class _Selection:
    """The series a selector matched, before a range is applied."""

    series: dict[Labels, list[tuple[float, float]]]


def _unquote(text: str) -> str:
    if not text.startswith('"'):
        raise ValueError(f"expected a quoted label value, found {text!r}")
    return str(bytes(text[1:-1], "utf-8").decode("unicode_escape"))


def _matches(actual: str, op: str, expected: str) -> bool:
    if op == "=":
        return actual == expected
    if op == "!=":
        return actual != expected
    if op == "=~":
        return re.fullmatch(expected, actual) is not None
    if op == "!~":
        return re.fullmatch(expected, actual) is None
    raise ValueError(f"unknown matcher {op!r}")


def _over_range(name: str, ranges: Ranges, window: float, at: float) -> Vector:
    out: Vector = {}
    for labels, samples in ranges.items():
        if len(samples) < 2:
            continue
        if name == "deriv":
            out[labels] = _slope(samples)
        else:
            increase = _extrapolated_increase(samples, at - window, at)
            out[labels] = increase / window if name == "rate" else increase
    return out


def _extrapolated_increase(samples: list[tuple[float, float]], start: float, end: float) -> float:
    """A counter's increase over ``(start, end]``, extrapolated as Prometheus does.

    The increase between the first and last sample (counter resets added back)
    is stretched towards the window's edges: all the way when the edge is
    within 1.1 sample intervals, else by half an interval, and never below zero.
    """
    (t0, first), (t1, _) = samples[0], samples[-1]
    increase = 0.0
    for (_, before), (_, after) in itertools.pairwise(samples):
        increase += after - before if after >= before else after  # a counter reset
    sampled = t1 - t0
    average = sampled / (len(samples) - 1)
    to_start, to_end = t0 - start, end - t1
    if increase > 0 and first >= 0:
        to_start = min(to_start, sampled * (first / increase))
    threshold = average * 1.1
    interval = sampled
    interval += to_start if to_start < threshold else average / 2
    interval += to_end if to_end < threshold else average / 2
    return increase * (interval / sampled)


def _slope(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope per second, as ``deriv`` computes it."""
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_v = sum(v for _, v in samples) / n
    num = sum((t - mean_t) * (v - mean_v) for t, v in samples)
    den = sum((t - mean_t) ** 2 for t, _ in samples)
    return num / den if den else 0.0


def _filter(left: Value, right: Value, op: Callable[[float, float], bool]) -> Value:
    if isinstance(left, dict) and isinstance(right, dict):
        return {k: v for k, v in left.items() if k in right and op(v, right[k])}
    if isinstance(left, dict):
        assert isinstance(right, float)
        return {k: v for k, v in left.items() if op(v, right)}
    if isinstance(right, dict):
        return {k: v for k, v in right.items() if op(left, v)}
    raise TypeError("a comparison of two scalars needs the bool modifier")


def _combine(left: Value, right: Value, op: Callable[[float, float], float]) -> Value:
    if isinstance(left, dict) and isinstance(right, dict):
        return {k: op(v, right[k]) for k, v in left.items() if k in right}
    if isinstance(left, dict):
        assert isinstance(right, float)
        return {k: op(v, right) for k, v in left.items()}
    if isinstance(right, dict):
        return {k: op(left, v) for k, v in right.items()}
    return op(left, right)


def _histogram_quantile(q: float, buckets: Vector) -> Vector:
    """Prometheus' estimate: linear interpolation within the bucket holding rank ``q``."""
    groups: dict[Labels, list[tuple[float, float]]] = {}
    for labels, count in buckets.items():
        rest = tuple((k, v) for k, v in labels if k != "le")
        le = dict(labels)["le"]
        groups.setdefault(rest, []).append((float(le), count))
    out: Vector = {}
    for labels, pairs in groups.items():
        pairs.sort()
        total = pairs[-1][1]
        if total == 0:
            continue
        rank = q * total
        lower, below = 0.0, 0.0
        for bound, count in pairs:
            if count >= rank:
                if math.isinf(bound):
                    out[labels] = lower
                else:
                    inside = count - below
                    out[labels] = lower + (bound - lower) * ((rank - below) / inside)
                break
            lower, below = bound, count
    return out


def load_rules(text: str) -> dict[str, Rule]:
    """The alerting rules of a Prometheus rules file, by name (needs PyYAML)."""
    import importlib

    yaml: Any = importlib.import_module("yaml")
    document = yaml.safe_load(text)
    rules: dict[str, Rule] = {}
    for group in document["groups"]:
        for rule in group["rules"]:
            duration = rule.get("for")
            rules[rule["alert"]] = Rule(
                rule["alert"], rule["expr"], parse_duration(duration) if duration else 0.0
            )
    return rules
