"""The OIDC certs are fetched once per max-age, not once per verification."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from api.web import auth


@dataclass
class FakeResponse:
    status: int
    headers: dict[str, str]
    data: bytes = b"{}"


@dataclass
class Fetch:
    responses: list[FakeResponse]
    calls: list[str] = field(default_factory=list)

    def __call__(self, url: str, method: str = "GET", **_: Any) -> FakeResponse:
        self.calls.append(url)
        return self.responses[min(len(self.calls), len(self.responses)) - 1]


def test_certs_are_kept_for_their_max_age(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(auth.time, "monotonic", lambda: now[0])
    fetch = Fetch([FakeResponse(200, {"Cache-Control": "public, max-age=3600"})])
    cache = auth._CertsCache(fetch)
    first = cache("https://certs")
    assert cache("https://certs") is first and len(fetch.calls) == 1
    now[0] += 3601
    cache("https://certs")
    assert len(fetch.calls) == 2


@pytest.mark.parametrize("headers", [{}, {"Cache-Control": "no-store"}, {"Cache-Control": "max-age=0"}])
def test_uncacheable_certs_are_fetched_every_time(headers: dict[str, str]) -> None:
    fetch = Fetch([FakeResponse(200, headers)])
    cache = auth._CertsCache(fetch)
    cache("u")
    cache("u")
    assert len(fetch.calls) == 2


def test_a_failed_fetch_is_not_kept() -> None:
    cacheable = {"Cache-Control": "max-age=60"}
    fetch = Fetch([FakeResponse(503, cacheable), FakeResponse(200, cacheable)])
    cache = auth._CertsCache(fetch)
    assert cache("u").status == 503
    assert cache("u").status == 200 and cache("u").status == 200
    assert len(fetch.calls) == 2
