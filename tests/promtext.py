"""A strict parser of the Prometheus text exposition format 0.0.4, for the tests.

prometheus_client is not installed here, so this checks what its parser (and
node_exporter's textfile collector) would insist on: ``# HELP`` / ``# TYPE`` before
a family's samples, one TYPE per family, valid metric and label names, quoted and
escaped label values, Go-parsable numbers, no duplicate series, counters named
``*_total``, and a final newline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
_VALUE = r'"(?:[^"\\\n]|\\[\\"n])*"'
_NUMBER = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?|Inf|NaN)"
_HELP = re.compile(rf"^# HELP ({_NAME}) (.*)$")
_TYPE = re.compile(rf"^# TYPE ({_NAME}) (counter|gauge|histogram|summary|untyped)$")
_SAMPLE = re.compile(
    rf"^({_NAME})(\{{(?:{_LABEL}={_VALUE}(?:,{_LABEL}={_VALUE})*)?\}})? ({_NUMBER})(?: -?[0-9]+)?$"
)
_PAIR = re.compile(rf"({_LABEL})=({_VALUE})")


@dataclass
class Family:
    name: str
    kind: str = "untyped"
    help: str = ""
    samples: dict[tuple[tuple[str, str], ...], float] = field(default_factory=dict)

    def value(self, **labels: str) -> float:
        """The one sample whose labels include ``labels``."""
        hits = [v for k, v in self.samples.items() if set(labels.items()) <= set(k)]
        assert len(hits) == 1, (self.name, labels, self.samples)
        return hits[0]


def parse(text: str) -> dict[str, Family]:
    """Parse ``text`` strictly; AssertionError names the first offending line."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    families: dict[str, Family] = {}
    typed: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        where = f"line {number}: {line!r}"
        if line.startswith("# HELP "):
            m = _HELP.match(line)
            assert m, where
            fam = families.setdefault(m[1], Family(m[1]))
            assert not fam.samples, f"HELP after samples, {where}"
            fam.help = m[2]
        elif line.startswith("# TYPE "):
            m = _TYPE.match(line)
            assert m, where
            assert m[1] not in typed, f"second TYPE, {where}"
            typed.add(m[1])
            fam = families.setdefault(m[1], Family(m[1]))
            assert not fam.samples, f"TYPE after samples, {where}"
            fam.kind = m[2]
            if fam.kind == "counter":
                assert fam.name.endswith("_total"), f"counter not named *_total, {where}"
        elif line.startswith("#") or not line.strip():
            continue
        else:
            m = _SAMPLE.match(line)
            assert m, f"malformed sample, {where}"
            name = m[1]
            assert name in typed, f"sample before its TYPE, {where}"
            labels = tuple(sorted(_PAIR.findall(m[2] or "")))
            names = [k for k, _ in labels]
            assert len(set(names)) == len(names), f"repeated label, {where}"
            unquoted = tuple((k, v[1:-1]) for k, v in labels)
            fam = families[name]
            assert unquoted not in fam.samples, f"duplicate series, {where}"
            fam.samples[unquoted] = float(m[3].replace("Inf", "inf").replace("NaN", "nan"))
    return families
