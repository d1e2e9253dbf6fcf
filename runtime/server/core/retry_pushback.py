"""When a refused request is worth retrying: the daemon's hint to the client.

A model whose queue is full refuses the next request with RESOURCE_EXHAUSTED. A client
that retries at once is refused again until a place frees, and on a small box every
refusal costs the cores the models run on: measured in docs/results/scheduler, 32
clients retrying a full LLM queue after 10 ms sent ~500 refused calls a second, and
the LLM alone decoded 53 tokens/s under them against 113-138 once they waited. So the
refusal says when a place is likely to free, in gRPC's standard
`grpc-retry-pushback-ms` trailing metadata (gRFC A6, which a retry policy honours):
the mean interval at which the model frees places while it is saturated, learnt as it
runs (`freed`; Admission: two ends of requests with others waiting; a vision batcher:
two batches taken with refusals before each).
"""

from __future__ import annotations

MIN_PUSHBACK_S = 0.005
MAX_PUSHBACK_S = 10.0
WEIGHT = 0.2  # of each new interval in the running mean: follows a change in a few


class FreeingPace:
    """A running (exponentially weighted) mean of the seconds between two freed places."""

    def __init__(self) -> None:
        self.mean_s: float | None = None
        self._last_saturated: float | None = None  # when a place last freed under load

    def freed(self, now: float, saturated: bool) -> None:
        """A place freed at `now`; `saturated`: requests were waiting or refused for it.
        Only the interval between two such frees counts: an idle spell teaches nothing."""
        if saturated and self._last_saturated is not None:
            self.add(now - self._last_saturated)
        self._last_saturated = now if saturated else None

    def add(self, seconds: float) -> None:
        if seconds >= 0:
            self.mean_s = seconds if self.mean_s is None else (
                self.mean_s + WEIGHT * (seconds - self.mean_s))

    def retry_after_s(self) -> float | None:
        """The pushback to send; None until the model has freed a place under load."""
        if self.mean_s is None:
            return None
        return min(MAX_PUSHBACK_S, max(MIN_PUSHBACK_S, self.mean_s))
