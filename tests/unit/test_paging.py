from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from api.errors import InvalidRequest
from api.web import paging

POS = (datetime(2026, 1, 1, tzinfo=UTC), uuid.uuid4())


@pytest.mark.parametrize(("raw", "size"), [(None, 50), ("", 50), ("0", 50), ("7", 7), ("500", 500), ("501", 500), ("100000", 500)])
def test_page_size(raw: str | None, size: int) -> None:
    assert paging.page_size(raw) == size


@pytest.mark.parametrize("raw", ["-1", "ten", "1.5", "1e3"])
def test_page_size_refuses_nonsense(raw: str) -> None:
    with pytest.raises(InvalidRequest):
        paging.page_size(raw)


def test_token_round_trips() -> None:
    token = paging.encode("k", POS, "scope")
    assert paging.decode("k", token, "scope") == POS


@pytest.mark.parametrize("mutate", [
    lambda t: t[:-2] + ("AA" if t[-2:] != "AA" else "BB"),
    lambda t: "x" + t,
    lambda t: "",
    lambda t: "!!!",
])
def test_a_tampered_token_is_refused(mutate) -> None:  # type: ignore[no-untyped-def]
    token = paging.encode("k", POS, "scope")
    with pytest.raises(InvalidRequest):
        paging.decode("k", mutate(token), "scope")


def test_a_token_is_bound_to_its_filters_and_key() -> None:
    token = paging.encode("k", POS, "scope")
    with pytest.raises(InvalidRequest, match="other filters"):
        paging.decode("k", token, "another")
    with pytest.raises(InvalidRequest):
        paging.decode("other-key", token, "scope")
