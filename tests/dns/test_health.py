"""Rise/fall counting, and the checker against real HTTP endpoints."""

from __future__ import annotations

import asyncio

import pytest

from tether.dns.config import HealthSettings, Pop
from tether.dns.health import HealthChecker, RiseFall

from .helpers import health_endpoints


@pytest.mark.parametrize(
    ("results", "states"),
    [
        # The first result stands on its own; then rise=2 / fall=3 apply.
        ("1111", "1111"),
        ("0", "0"),
        ("1001000", "1111110"),
        ("10010001", "11111100"),
        ("0011", "0001"),
        ("00101", "00000"),
        ("1000110011", "1110011111"),
    ],
)
def test_rise_and_fall(results: str, states: str) -> None:
    state = RiseFall(rise=2, fall=3)
    assert state.up and not state.checked
    seen = ""
    for result in results:
        state.observe(result == "1")
        seen += "1" if state.up else "0"
    assert seen == states


def test_observe_reports_changes_only() -> None:
    state = RiseFall(rise=1, fall=1)
    assert [state.observe(ok) for ok in (True, True, False, False, True)] == [
        False,
        False,
        True,
        False,
        True,
    ]


def test_rise_and_fall_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RiseFall(0, 1)


async def test_checker_follows_endpoints() -> None:
    settings = HealthSettings(interval=0.05, timeout=0.2, rise=2, fall=2)
    changes: list[tuple[str, bool]] = []
    async with health_endpoints(3) as (ok, failing, hanging):
        failing.mode = "error"
        hanging.mode = "hang"
        pops = [
            Pop("ok", 1, (), (), ok.url),
            Pop("failing", 1, (), (), failing.url),
            Pop("hanging", 1, (), (), hanging.url),
            Pop("unchecked", 1, (), (), None),
        ]
        changed = asyncio.Event()

        def listener(pop: Pop, up: bool, healthy: frozenset[str]) -> None:
            changes.append((pop.id, up))
            changed.set()

        async def until(healthy: set[str]) -> None:
            async with asyncio.timeout(5):
                while checker.healthy != healthy:
                    await changed.wait()
                    changed.clear()

        checker = HealthChecker(pops, settings, listener)
        assert checker.healthy == {"ok", "failing", "hanging", "unchecked"}
        task = asyncio.create_task(checker.run())
        try:
            await until({"ok", "unchecked"})
            assert sorted(changes) == [("failing", False), ("hanging", False)]
            failing.mode = "ok"
            await until({"ok", "failing", "unchecked"})
            assert changes[-1] == ("failing", True)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert ok.hits >= 2


async def test_checker_without_urls_returns_at_once() -> None:
    checker = HealthChecker([Pop("a", 1, (), (), None)], HealthSettings())
    async with asyncio.timeout(1):
        await checker.run()
    assert checker.healthy == {"a"}
