"""What a benchmark run produces: sections of rows, each row with the values of every repeat
for two columns (sagaq vs raw Celery, or empty vs big table)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.measure import median


@dataclass
class Row:
    name: str
    unit: str
    a: list[float] = field(default_factory=list)
    b: list[float] = field(default_factory=list)
    key: str = ""  # stable id for plots and JSON consumers, e.g. "W1.throughput"
    details: list[dict[str, Any]] = field(default_factory=list)  # per measurement, JSON only

    @property
    def a_median(self) -> float:
        return median([v for v in self.a if not math.isnan(v)])

    @property
    def b_median(self) -> float:
        return median([v for v in self.b if not math.isnan(v)])


@dataclass
class Section:
    key: str
    title: str
    a_label: str = "sagaq"
    b_label: str = "raw Celery"
    ratio_label: str = "sagaq/raw"
    ratio_inverted: bool = False  # ratio = b/a instead of a/b
    notes: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)

    def row(self, key: str, name: str, unit: str) -> Row:
        for row in self.rows:
            if row.key == key:
                return row
        row = Row(name=name, unit=unit, key=key)
        self.rows.append(row)
        return row

    def get(self, key: str) -> Row:
        """The row `key`, or an empty one (NaN medians) when it was not measured."""
        return next((row for row in self.rows if row.key == key), Row(name=key, unit=""))

    def ratio(self, row: Row) -> float:
        a, b = row.a_median, row.b_median
        if self.ratio_inverted:
            a, b = b, a
        if math.isnan(a) or math.isnan(b) or b == 0:
            return float("nan")
        return a / b


@dataclass
class Results:
    meta: dict[str, Any]
    sections: list[Section] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def section(self, key: str) -> Section | None:
        return next((s for s in self.sections if s.key == key), None)

    def to_json(self) -> dict[str, Any]:
        sections = []
        for s in self.sections:
            data = asdict(s)
            for row, out in zip(s.rows, data["rows"], strict=True):
                out["a_median"] = _clean(row.a_median)
                out["b_median"] = _clean(row.b_median)
                out["ratio"] = _clean(s.ratio(row))
                out["a"] = [_clean(v) for v in row.a]
                out["b"] = [_clean(v) for v in row.b]
            sections.append(data)
        return {"meta": self.meta, "sections": sections, "errors": self.errors}


def _clean(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 3)
