"""What both simulated PLC servers share: a restart that keeps the PLC's memory, like a real PLC reboot."""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod


class RestartableServer(ABC):
    """A server whose `stop()` keeps its values for the next `start()`."""

    @property
    @abstractmethod
    def running(self) -> bool: ...

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    async def restart(self, down_s: float) -> float:
        """Stop, stay down for `down_s` seconds, start again with the PLC's values kept.

        Returns the wall-clock time of the stop. Writes made meanwhile (the PLC keeps working) are served
        by the restarted server.
        """
        t_stop = time.time()
        await self.stop()
        await asyncio.sleep(down_s)
        await self.start()
        return t_stop
