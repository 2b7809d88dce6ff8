"""The mailbox between the AL loop (driver) and a kept Ray Train worker group (``train.TrainSession``).

The driver posts job ``i`` (or ``None``: stop) and waits for its result; every worker takes the jobs in order
and rank 0 hands in each result. A Ray actor with async methods, so a waiting worker or driver costs nothing.
This module imports neither torch nor the rest of tavaal: the actor's process stays small.
"""

from __future__ import annotations

import asyncio
from typing import Any


class JobBoard:
    def __init__(self) -> None:
        self.jobs: dict[int, Any] = {}
        self.results: dict[int, Any] = {}
        self.delivered: set[int] = set()
        self.changed = asyncio.Condition()

    async def post(self, i: int, job: Any) -> None:
        async with self.changed:
            self.jobs[i] = job
            self.changed.notify_all()

    async def job(self, i: int) -> Any:
        """Job ``i`` once it is posted (``None`` means stop)."""
        async with self.changed:
            await self.changed.wait_for(lambda: i in self.jobs)
            return self.jobs[i]

    async def finish(self, i: int, result: Any) -> None:
        """Rank 0's result of job ``i``; a repeat (a restarted group redoing a finished job) is dropped."""
        async with self.changed:
            if i not in self.delivered:
                self.results[i] = result
                self.changed.notify_all()

    async def result(self, i: int) -> Any:
        async with self.changed:
            await self.changed.wait_for(lambda: i in self.results)
            self.delivered.add(i)
            return self.results.pop(i)  # jobs stay: a group restarted after a failure may take job i again
