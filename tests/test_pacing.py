"""reconcile.pacing's Availability: the verdict a transaction that lost its connection gets."""

from __future__ import annotations

import asyncio

import pytest

from reconcile.storage.pacing import Availability


async def monitor(availability: Availability, answers: list[bool]) -> None:
    """A monitor checking whenever woken, answering from ``answers`` (the last one repeats)."""
    while True:
        await availability.woken(60)
        up = answers.pop(0) if len(answers) > 1 else answers[0]
        availability.report(up, None if up else "down")


async def test_a_lost_connection_while_the_database_answers_is_not_an_outage() -> None:
    availability = Availability()
    task = asyncio.create_task(monitor(availability, [True]))
    try:
        assert await asyncio.wait_for(availability.outage(), 5) is False
    finally:
        task.cancel()


async def test_an_outage_is_waited_out() -> None:
    availability = Availability()
    answers = [False]
    task = asyncio.create_task(monitor(availability, answers))
    try:
        verdict = asyncio.create_task(availability.outage())
        await asyncio.sleep(0.1)
        assert not verdict.done() and not availability.up
        assert availability.reason == "down"
        availability.report(True)  # the database answers again
        assert await asyncio.wait_for(verdict, 5) is True
        assert availability.up and availability.reason is None
    finally:
        task.cancel()


async def test_no_monitor_answering_counts_as_no_outage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Availability, "VERDICT_TIMEOUT", 0.1)
    assert await Availability().outage() is False


async def test_report_says_when_the_state_changed() -> None:
    availability = Availability()
    assert availability.report(True) is False
    assert availability.report(False, "x") is True
    assert availability.report(False, "x") is False
    assert availability.report(True) is True
