"""cloudjobs_client's compositions: chain, group and chord only write `needs`."""

from __future__ import annotations

import pytest
from cloudjobs_client import Step, chain, chord, group
from cloudjobs_client.workflows import steps_of


def needs(flow: object) -> dict[str, list[str]]:
    return {s["name"]: s.get("needs", []) for s in steps_of(flow)}  # type: ignore[arg-type]


def test_a_chain_links_each_step_to_the_one_before() -> None:
    assert needs(chain(Step("a", "echo"), Step("b", "echo"), Step("c", "echo"))) == {
        "a": [], "b": ["a"], "c": ["b"]}


def test_a_group_after_a_step_fans_out_and_a_step_after_the_group_fans_in() -> None:
    flow = chain(Step("a", "echo"), group(Step("b", "echo"), chain(Step("c", "echo"), Step("d", "echo"))),
                 Step("e", "echo"))
    assert needs(flow) == {"a": [], "b": ["a"], "c": ["a"], "d": ["c"], "e": ["b", "d"]}


def test_a_chord_is_its_callback_after_every_step_of_its_header() -> None:
    assert needs(chord(group(Step("x", "echo"), Step("y", "echo")), Step("z", "echo"))) == {
        "x": [], "y": [], "z": ["x", "y"]}


def test_a_steps_own_needs_and_options_are_kept() -> None:
    [a, b] = steps_of(chain(Step("a", "echo", {"k": 1}, queue="q", max_attempts=2),
                            Step("b", "echo", needs=["a"], on_dependency_failure="run", labels={"t": "x"})))
    assert a == {"name": "a", "type": "echo", "payload": {"k": 1}, "queue": "q", "max_attempts": 2}
    assert b == {"name": "b", "type": "echo", "payload": {}, "needs": ["a"], "on_dependency_failure": "run",
                 "labels": {"t": "x"}}


def test_plain_dicts_mix_with_steps_and_names_must_be_unique() -> None:
    assert needs(chain({"name": "a", "type": "echo"}, Step("b", "echo"))) == {"a": [], "b": ["a"]}
    with pytest.raises(ValueError, match="unique"):
        steps_of(group(Step("a", "echo"), Step("a", "echo")))
    with pytest.raises(ValueError, match="name and a type"):
        steps_of([{"type": "echo"}])
    with pytest.raises(ValueError):
        chain()
