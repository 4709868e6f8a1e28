"""A workflow's DAG laid out for an SVG drawing: a column per depth, a box per step, a line
per `needs` edge. Pure layout; the template draws it (no script, no framework).

Each step's column is its depth: 0 for a step that needs nothing, else one more than the
deepest step it needs. Within a column, steps keep the order the workflow gave them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from graphlib import TopologicalSorter
from typing import Any

BOX_W, BOX_H = 168, 40
GAP_X, GAP_Y, MARGIN = 56, 16, 8
# Beyond this the drawing is no help (and heavy); the page lists the steps instead.
MAX_DRAWN = 400


@dataclass(frozen=True)
class Node:
    x: int
    y: int
    name: str
    state: str
    job_id: str


@dataclass(frozen=True)
class Edge:
    x1: int
    y1: int
    x2: int
    y2: int


@dataclass(frozen=True)
class Drawing:
    width: int
    height: int
    nodes: list[Node]
    edges: list[Edge]
    box_w: int = BOX_W
    box_h: int = BOX_H


def layout(steps: Sequence[Mapping[str, Any]]) -> Drawing | None:
    """The drawing of a workflow's steps (the API's step objects), or None past MAX_DRAWN."""
    if not steps or len(steps) > MAX_DRAWN:
        return None
    by_name = {s["name"]: s for s in steps}
    graph = {s["name"]: [n for n in s["needs"] if n in by_name] for s in steps}
    depth: dict[str, int] = {}
    for name in TopologicalSorter(graph).static_order():  # needs come first
        depth[name] = 1 + max((depth[n] for n in graph[name]), default=-1)
    columns: dict[int, list[str]] = {}
    for s in steps:
        columns.setdefault(depth[s["name"]], []).append(s["name"])
    place: dict[str, tuple[int, int]] = {}
    for col, names in columns.items():
        for row, name in enumerate(names):
            place[name] = (MARGIN + col * (BOX_W + GAP_X), MARGIN + row * (BOX_H + GAP_Y))
    nodes = [Node(*place[s["name"]], s["name"], s["state"], s["job_id"]) for s in steps]
    edges = [
        Edge(place[n][0] + BOX_W, place[n][1] + BOX_H // 2, place[name][0], place[name][1] + BOX_H // 2)
        for name, needs in graph.items() for n in needs
    ]
    width = MARGIN * 2 + len(columns) * BOX_W + (len(columns) - 1) * GAP_X
    height = MARGIN * 2 + max(len(c) for c in columns.values()) * (BOX_H + GAP_Y) - GAP_Y
    return Drawing(width, height, nodes, edges)
