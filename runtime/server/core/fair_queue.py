"""The box-wide scheduler's policy: which model's next unit of work runs, and when.

Pure bookkeeping: no threads, no clock of its own (every call is given `now`), so a
test drives it with a fake clock and fake work and checks it exactly. The threads that
wait for it are in scheduler.py.

    queue = FairQueue({"cpu": 2, "gpu": 1})
    queue.set("llm", Schedule(share=1, slots=2), now)
    queue.set("vit", Schedule(share=3, priority=1, slots=1), now)
    ticket = queue.want("vit", now)        # a unit of work asks to run
    for granted in queue.grant(now): ...   # the units that may start now, in order
    queue.done("vit", now, more=True)      # a granted unit finished; its model has more

The rule:
- A unit of work is one forward pass of one model: an LLM prefill or decode step, or a
  vision batch. It asks for its turn right before it runs and says when it is done.
- Slots: each resource has a capacity (the usable CPU cores; the GPU, one). A model
  holds `slots` of its resource while any of its units run: on the CPU its configured
  intra-op threads (0 = every core), and its units share that one thread pool, so a
  second unit of a model already running takes no more. Two models that want every
  core run one after the other; two one-thread models on two cores run together.
- Weighted fair queuing over measured execution time: each model has a virtual time
  that advances by the seconds it held its slots divided by its share (a running
  model's clock runs while it holds them). The waiting unit of the model with the
  smallest virtual time goes next, so over time the models' busy seconds follow their
  shares.
- Work-conserving: only active models count (work waiting or running), so a share an
  idle model does not use goes to the others. A model that becomes active again starts
  where it stood against the others when it went idle (its lag: behind by what it was
  owed, ahead by what it had run over): time spent idle is never banked as credit to
  burst with later, and a short break costs it nothing it was owed. A model's first
  start is level with the active model furthest behind.
- The next unit: a model's worker runs one unit, hands its results back and asks for
  the next, so between two units its model is briefly idle. When a unit ends with
  more work ready (requests waiting, streams going on), its model still counts as
  active for ANTICIPATE_S, and while it is owed time (its virtual time below the next
  waiting model's) the slots it needs are kept free for it. Without that, a model with
  one worker would lose its turn at every gap to whichever model waits with the
  longest units, and the shares would follow unit sizes instead. A model with nothing
  ready is not waited for: a camera's frame every 40 ms never idles the box.
- No overtaking: when the model next in order does not fit in the free slots, nobody
  behind it on that resource starts (no backfill); running units finish and free the
  slots for it, so a model that needs every core is never starved by smaller ones. The
  CPU and the GPU are ordered apart: a GPU model never waits for cores.
- Request handling: what a model's requests cost the daemon outside its units (gRPC,
  parsing, image decoding, the answers: CPU seconds on the event loop, measured per
  call by request_cpu.py) is charged to it (`charge`): on the CPU its virtual time
  advances as if it had held its slots for those seconds spread over them, so a model
  of many cheap requests cannot take more than its share through the handling the
  others wait behind. A GPU model's handling is counted but moves nothing (it does not
  take the GPU).
- Priority: the order compares virtual time minus PRIORITY_LEAD_S per priority level,
  so a model with a higher priority goes first until it is that far ahead of the others
  and then takes turns with them at its share: served first, within a bound. A model
  of lower priority with work waiting waits at most until the higher one has run
  PRIORITY_LEAD_S x (priority difference) x its share ahead of fair, plus one unit.
"""

from __future__ import annotations

import collections
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

RESOURCES = ("cpu", "gpu")
# Virtual seconds (busy seconds per unit of share) a model may run ahead of fair per
# priority level: long enough to serve a burst of a latency-critical model first
# (tens of vision batches or decode steps), short enough that the others' next unit
# waits a fraction of a second at most.
PRIORITY_LEAD_S = 0.1
# How long a model with work ready stays active after a unit: its worker's hand-off
# between two units (results to the event loop, sampling the next tokens) takes well
# under a millisecond alone, and longer when it waits for the GIL behind a busy event
# loop (measured in a daemon serving 64 clients on 2 cores: half the gaps under 3 ms,
# 99 % under 20). Slots are kept for a model owed time at most this long.
ANTICIPATE_S = 0.02


def charged_seconds(busy_s: float, handling_s: float, resource: str | None,
                    slots: int) -> float:
    """What the shares divide for one model: the seconds it held its slots and, on the
    CPU, its requests' handling spread over those slots (as `FairQueue.charge` counts it)."""
    if resource != "cpu" or slots < 1:
        return busy_s
    return busy_s + handling_s / slots


@dataclass(frozen=True)
class Schedule:
    """What the scheduler knows of one model: its weight, its priority, what it holds."""

    share: float = 1.0  # weight of the box's execution time (relative to the others')
    priority: int = 0  # higher goes first, within PRIORITY_LEAD_S per level
    resource: str = "cpu"  # what its units run on: cpu | gpu
    slots: int = 1  # of that resource, held while any of its units runs

    def __post_init__(self) -> None:
        if not (self.share > 0 and math.isfinite(self.share)) or self.priority < 0:
            raise ValueError(f"share must be > 0 and priority >= 0, got {self.share}, "
                             f"{self.priority}")
        if self.resource not in RESOURCES or self.slots < 1:
            raise ValueError(f"resource must be one of {RESOURCES} and slots >= 1, got "
                             f"{self.resource!r}, {self.slots}")


@dataclass(eq=False)  # compared by identity: a queue removes its own ticket
class Ticket:
    """One unit of work waiting for its turn."""

    model: str
    since: float  # when it asked
    arrival: int  # its place in the order all units asked, the last tie-break
    granted: bool = False


@dataclass(frozen=True)
class Usage:
    """One model's account: what it ran, how long its units waited, what was dropped."""

    busy_s: float  # seconds it held its slots (a running hold counted up to now)
    handling_s: float  # CPU seconds its requests cost outside its units (charge())
    queue_s: float  # its units' waits for their turn, summed
    units: int  # units granted
    shed: int  # requests dropped before they ran (deadline passed, client left)
    running: int
    waiting: int


@dataclass(eq=False)
class _Model:
    schedule: Schedule
    vtime: float = 0.0  # busy seconds / share, as of the end of its last hold
    running: int = 0  # units running now
    held_since: float = 0.0  # when `running` last went from 0 to 1
    ready_until: float = -math.inf  # its last unit ended with more work ready: until then
    lag: float = 0.0  # as it went idle: the others' floor minus its virtual time (owed > 0)
    waiting: collections.deque[Ticket] = field(default_factory=collections.deque)
    busy_s: float = 0.0
    handling_s: float = 0.0
    queue_s: float = 0.0
    units: int = 0
    shed: int = 0

    def active(self, now: float) -> bool:
        return self.running > 0 or bool(self.waiting) or self.expected(now)

    def expected(self, now: float) -> bool:
        """Between a unit that ended with more work ready and the next one's asking."""
        return not self.running and not self.waiting and now < self.ready_until

    def virtual_time(self, now: float) -> float:
        """Its virtual time with the running hold counted up to `now`."""
        if self.running:
            return self.vtime + (now - self.held_since) / self.schedule.share
        return self.vtime

    def key(self, now: float) -> float:
        return self.virtual_time(now) - PRIORITY_LEAD_S * self.schedule.priority


class FairQueue:
    def __init__(self, capacity: Mapping[str, int]):
        unknown = set(capacity) - set(RESOURCES)
        if unknown or any(n < 1 for n in capacity.values()):
            raise ValueError(f"capacity: resources {RESOURCES}, each >= 1, got {dict(capacity)}")
        self.capacity = dict(capacity)
        self.used = {resource: 0 for resource in self.capacity}
        self.models: dict[str, _Model] = {}
        self._arrivals = itertools.count()

    # ---- configuration ----------------------------------------------------------------
    def set(self, name: str, schedule: Schedule, now: float) -> None:
        """Add a model or change its schedule; a running hold so far counts at the old one."""
        if schedule.resource not in self.capacity:
            raise ValueError(f"model {name!r}: this box has no {schedule.resource}")
        fitted = min(schedule.slots, self.capacity[schedule.resource])
        if fitted != schedule.slots:
            schedule = replace(schedule, slots=fitted)
        model = self.models.get(name)
        if model is None:
            self.models[name] = _Model(schedule)
            return
        if model.running:
            model.busy_s += now - model.held_since
            model.vtime = model.virtual_time(now)
            model.held_since = now
            self.used[model.schedule.resource] -= model.schedule.slots
            self.used[schedule.resource] += schedule.slots  # may run over until it ends
        model.schedule = schedule

    # ---- a unit's life ----------------------------------------------------------------
    def want(self, name: str, now: float) -> Ticket:
        """A unit of `name` asks to run; call grant() to learn whether it may."""
        model = self.models[name]
        if not model.active(now):  # where it stood when it went idle; idle time earns nothing
            model.vtime = max(model.vtime, self.floor(now, model) - model.lag)
        ticket = Ticket(name, now, next(self._arrivals))
        model.waiting.append(ticket)
        return ticket

    def withdraw(self, ticket: Ticket, now: float) -> None:
        """A waiting unit gives up (its requests expired); a granted one must call done()."""
        if not ticket.granted:
            model = self.models[ticket.model]
            model.waiting.remove(ticket)
            self._note_lag(model, now)

    def grant(self, now: float) -> list[Ticket]:
        """The waiting units that may start now, in fair order; each is marked granted."""
        granted: list[Ticket] = []
        blocked: set[str] = set()  # resources whose head waits for slots: nobody overtakes it
        while True:
            candidates = [m for m in self.models.values()
                          if m.waiting and m.schedule.resource not in blocked]
            if not candidates:
                return granted
            head = min(candidates, key=lambda m: (m.key(now), -m.schedule.priority,
                                                  m.waiting[0].arrival))
            resource = head.schedule.resource
            need = 0 if head.running else head.schedule.slots
            if self.used[resource] + need + self._kept_for(head, now) > self.capacity[resource]:
                blocked.add(resource)  # it starts when slots free; other resources go on
                continue
            if not head.running:
                self.used[resource] += need
                head.held_since = now
            head.running += 1
            ticket = head.waiting.popleft()
            ticket.granted = True
            head.units += 1
            head.queue_s += now - ticket.since
            granted.append(ticket)

    def _kept_for(self, head: _Model, now: float) -> int:
        """Slots of `head`'s resource kept free for expected models owed time before it."""
        key = head.key(now)
        return sum(m.schedule.slots for m in self.models.values()
                   if m.expected(now) and m.schedule.resource == head.schedule.resource
                   and m.key(now) < key)

    def done(self, name: str, now: float, more: bool = False) -> None:
        """A granted unit of `name` finished; the last one to finish ends the hold.
        `more`: the model has work ready for its next unit (its worker asks at once)."""
        model = self.models[name]
        if model.running < 1:
            raise RuntimeError(f"model {name!r}: done() without a running unit")
        model.running -= 1
        if model.running == 0:
            held = now - model.held_since
            model.busy_s += held
            model.vtime += held / model.schedule.share
            self.used[model.schedule.resource] -= model.schedule.slots
        model.ready_until = now + ANTICIPATE_S if more else -math.inf
        self._note_lag(model, now)

    def _note_lag(self, model: _Model, now: float) -> None:
        """As `model` may be going idle: where it stands against the others (0 when none
        of them is active: alone, it is behind or ahead of nobody)."""
        if model.running or model.waiting:
            return
        floor = self._active_floor(now, model)
        model.lag = 0.0 if floor is None else floor - model.vtime

    def charge(self, name: str, cpu_s: float, now: float) -> None:
        """`cpu_s` CPU seconds spent on `name`'s requests outside its units (a model
        gone meanwhile is ignored). On the CPU they count as a hold of its slots for
        cpu_s / slots: one core-second of handling weighs what one core-second of its
        run does."""
        model = self.models.get(name)
        if model is None or cpu_s <= 0:
            return
        model.handling_s += cpu_s
        if model.schedule.resource != "cpu":
            return
        step = cpu_s / model.schedule.slots / model.schedule.share
        model.vtime += step
        if not model.active(now):  # it rejoins where it stood, less what it was charged
            model.lag -= step

    def shed(self, name: str, requests: int = 1) -> None:
        """Count requests dropped before they ran (their deadline passed, their client left)."""
        self.models[name].shed += requests

    # ---- reading ----------------------------------------------------------------------
    def next_change(self, now: float) -> float | None:
        """When the grants may change with no call in between: the first wait for an
        expected model that lapses. None: only a call changes them."""
        ends = [m.ready_until for m in self.models.values() if m.expected(now)]
        return min(ends, default=None)

    def floor(self, now: float, joining: _Model) -> float:
        """The virtual time the active models are at, seen from `joining`: that of the one
        furthest behind (the largest of all when none is active; 0 on a fresh box)."""
        floor = self._active_floor(now, joining)
        if floor is not None:
            return floor
        return max((self._fair_point(m, now, joining) for m in self.models.values()
                    if m is not joining), default=0.0)

    def _active_floor(self, now: float, joining: _Model) -> float | None:
        points = [self._fair_point(m, now, joining) for m in self.models.values()
                  if m is not joining and m.active(now)]
        return min(points, default=None)

    @staticmethod
    def _fair_point(other: _Model, now: float, joining: _Model) -> float:
        """`other`'s virtual time less its priority lead over `joining`: a model of lower
        priority stands level with a higher one's fair point, not behind it by the lead
        (the lead is the higher one's to use, not the lower one's to lose)."""
        lead = max(0, other.schedule.priority - joining.schedule.priority)
        return other.virtual_time(now) - PRIORITY_LEAD_S * lead

    def usage(self, now: float) -> dict[str, Usage]:
        return {
            name: Usage(
                busy_s=m.busy_s + (now - m.held_since if m.running else 0.0),
                handling_s=m.handling_s,
                queue_s=m.queue_s + sum(now - t.since for t in m.waiting),
                units=m.units, shed=m.shed, running=m.running, waiting=len(m.waiting))
            for name, m in self.models.items()
        }
