"""What every service asks before it takes a request: is the daemon still taking them.

One object, shared by the EdgeRuntime and KServe services and the daemon that owns
it, so a drain that starts refuses new requests on every API at the same instant.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.server.guard.errors import Draining


@dataclass
class ServingState:
    draining: bool = False  # set at shutdown: new requests are refused with UNAVAILABLE
    loaded: bool = False  # the first load of the configured models is over

    def admit(self) -> None:
        """Raise Draining (UNAVAILABLE) once the drain has begun."""
        if self.draining:
            raise Draining()
