"""The front doors' run drivers (factory.operations.Drivers) without services: a run asked for again
while its driver still runs is driven once more after it; at most ``limit`` drive at once."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

from factory.operations import Drivers
from factory.wiring import Factory


def drivers(limit: int = 4) -> Drivers:
    return Drivers(cast(Factory, SimpleNamespace(settings=SimpleNamespace(worker_runs=limit))), limit=limit)


async def test_a_run_asked_for_while_its_driver_lets_go_is_driven_again() -> None:
    d, letting_go, drives = drivers(), asyncio.Event(), list[int]()

    async def drive() -> None:
        drives.append(len(drives))
        if len(drives) == 1:
            await letting_go.wait()  # the first drive is still finishing when the decision comes

    d.spawn("run-1", drive, again=True)
    await asyncio.sleep(0)
    d.spawn("run-1", drive, again=True)  # a decision: the run must be looked at once more
    d.spawn("run-1", drive, again=True)  # and another: still once more, not twice
    letting_go.set()
    await d.settled(5)
    assert drives == [0, 1] and d.active() == []


async def test_without_again_a_second_ask_is_dropped_and_failures_do_not_stop_the_process() -> None:
    d, drives = drivers(), list[str]()

    async def failing() -> None:
        drives.append("x")
        await asyncio.sleep(0.01)
        raise RuntimeError("boom")

    d.spawn("gc-1", failing)
    d.spawn("gc-1", failing)
    await d.settled(5)
    assert drives == ["x"] and d.active() == []


async def test_at_most_limit_runs_are_driven_at_once() -> None:
    d = drivers(limit=2)
    running, most = 0, 0

    async def drive() -> None:
        nonlocal running, most
        async with d._slots:  # noqa: SLF001  (the slots the real drive takes)
            running += 1
            most = max(most, running)
            await asyncio.sleep(0.01)
            running -= 1

    for n in range(6):
        d.spawn(f"run-{n}", drive)
    await d.settled(5)
    assert most == 2


async def test_closing_stops_every_driver() -> None:
    d, started = drivers(), asyncio.Event()

    async def forever() -> Any:
        started.set()
        await asyncio.Event().wait()

    d.spawn("run-9", forever)
    await started.wait()
    await d.aclose()
    assert d.active() == []
