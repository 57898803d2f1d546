"""HTTP health checks of the POPs, with rise/fall counts.

A POP is checked every ``interval`` seconds with a ``GET`` on its health URL (e.g. its
load balancer's or a node's ``/ready``); a 2xx or 3xx answer within ``timeout`` passes,
anything else fails. ``fall`` failures in a row take an up POP out of the answers,
``rise`` passes in a row bring a down POP back, so one lost packet moves nobody.

Before its first check a POP counts as up, so a freshly started server answers at once;
the first check's result then stands on its own (a POP found down at start is not sent
clients for ``fall`` more intervals). A POP without a health URL is always up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import httpx

from tether.dns.config import HealthSettings, Pop

logger = logging.getLogger("tether.dns.health")


class RiseFall:
    """The up/down state of one POP, fed one check result at a time (no I/O, no clock)."""

    def __init__(self, rise: int, fall: int) -> None:
        if rise < 1 or fall < 1:
            raise ValueError("rise and fall must be at least 1")
        self.rise = rise
        self.fall = fall
        self.checked = False
        self.up = True
        self._streak = 0  # results in a row that disagree with ``up``

    def observe(self, ok: bool) -> bool:
        """Record one check result; True if that changed ``up``."""
        if not self.checked:
            self.checked = True
            changed = ok != self.up
            self.up = ok
            return changed
        if ok == self.up:
            self._streak = 0
            return False
        self._streak += 1
        if self._streak >= (self.rise if ok else self.fall):
            self.up = ok
            self._streak = 0
            return True
        return False


HealthListener = Callable[[Pop, bool, frozenset[str]], None]
"""Called with the POP that changed, whether it is now up, and the ids of all up POPs."""


class HealthChecker:
    """Checks every POP that has a health URL, until cancelled.

    ``healthy`` always holds the ids of the POPs to answer with; ``listener`` is called
    (from the event loop) after each change.
    """

    def __init__(
        self,
        pops: Sequence[Pop],
        settings: HealthSettings,
        listener: HealthListener | None = None,
    ) -> None:
        self.pops = tuple(pops)
        self.settings = settings
        self.listener = listener
        self.states = {pop.id: RiseFall(settings.rise, settings.fall) for pop in self.pops}
        self.healthy: frozenset[str] = frozenset(self.states)

    async def run(self) -> None:
        """Check forever (until cancelled); never raises for a failing POP."""
        checked = [pop for pop in self.pops if pop.health]
        if not checked:
            return
        timeout = httpx.Timeout(self.settings.timeout)
        # trust_env=False: a proxy set for the operator's shell must not sit between the
        # checker and the POPs it judges.
        async with (
            httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client,
            asyncio.TaskGroup() as group,
        ):
            for pop in checked:
                group.create_task(self._watch(client, pop))

    async def check(self, client: httpx.AsyncClient, pop: Pop) -> bool:
        """One check: True for a 2xx/3xx answer within the timeout."""
        assert pop.health is not None
        try:
            async with asyncio.timeout(self.settings.timeout):
                response = await client.get(pop.health)
        except (httpx.HTTPError, TimeoutError, OSError) as exc:
            logger.debug("health check failed", extra={"pop": pop.id, "error": repr(exc)})
            return False
        return 200 <= response.status_code < 400

    async def _watch(self, client: httpx.AsyncClient, pop: Pop) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                ok = await self.check(client, pop)
            except Exception:  # a bug here must fail one check, not stop every check
                logger.exception("health check crashed", extra={"pop": pop.id})
                ok = False
            self.record(pop, ok)
            await asyncio.sleep(max(0.0, self.settings.interval - (loop.time() - started)))

    def record(self, pop: Pop, ok: bool) -> None:
        """Feed one result for ``pop``; updates ``healthy`` and tells the listener."""
        state = self.states[pop.id]
        if not state.observe(ok):
            return
        if state.up:
            self.healthy = self.healthy | {pop.id}
            logger.info("POP up", extra={"pop": pop.id})
        else:
            self.healthy = self.healthy - {pop.id}
            logger.warning("POP down", extra={"pop": pop.id, "url": pop.health})
        if self.listener is not None:
            self.listener(pop, state.up, self.healthy)
