"""The dashboard's SVG chart helpers: pure functions from numbers to markup."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from api.ui.charts import Series, bar_chart, line_chart, nice_max

NS = "{http://www.w3.org/2000/svg}"


@pytest.mark.parametrize(("value", "expected"), [
    (0, 1), (-3, 1), (0.3, 0.5), (1, 1), (3, 5), (7, 10), (12, 20), (100, 100), (101, 200), (240, 250),
])
def test_nice_max_rounds_up_to_a_round_number(value: float, expected: float) -> None:
    assert nice_max(value) == pytest.approx(expected)


def test_bars_stack_in_order_and_scale_to_the_tallest() -> None:
    svg = bar_chart("Jobs", ["a", "b"], [Series("ok", [3, 1], "#0f0"), Series("bad", [1, 0], "#f00")])
    root = ET.fromstring(str(svg))
    bars = [r for r in root.iter(f"{NS}rect") if r.find(f"{NS}title") is not None]
    assert [(r.get("fill"), r.find(f"{NS}title").text) for r in bars] == [  # type: ignore[union-attr]
        ("#0f0", "a ok: 3"), ("#f00", "a bad: 1"), ("#0f0", "b ok: 1"),
    ]
    ok_a, bad_a, _ = (float(r.get("height", 0)) for r in bars)
    assert ok_a == pytest.approx(3 * bad_a)  # the axis tops at 5: 3 and 1 keep their ratio
    assert float(bad_a) + float(ok_a) < 168  # and does not fill the plot


def test_lines_break_at_gaps_and_mark_every_point() -> None:
    svg = line_chart("Rate", ["1", "2", "3", "4"], [Series("p50", [1.0, 2.0, None, 0.5], "#00f")], y_max=4)
    root = ET.fromstring(str(svg))
    [line] = list(root.iter(f"{NS}polyline"))
    assert len(line.get("points", "").split()) == 2
    assert len(list(root.iter(f"{NS}circle"))) == 3


def test_text_is_escaped_and_the_chart_is_labelled() -> None:
    svg = str(bar_chart("<script>x</script>", ["<b>"], [Series("a&b", [1], "#000")]))
    assert "<script>" not in svg and "<b>" not in svg
    root = ET.fromstring(svg)
    assert root.get("role") == "img"
    assert root.find(f"{NS}title").text == "<script>x</script>"  # type: ignore[union-attr]
    assert re.search(r"a&amp;b", svg)


def test_an_empty_chart_is_still_valid_svg() -> None:
    for svg in (bar_chart("t", [], []), line_chart("t", [], [])):
        assert ET.fromstring(str(svg)).tag == f"{NS}svg"
