"""The scheduler's policy on a fake clock with fake work: exact, and fast.

`Box` plays the models' worker threads: each worker of a backlogged model asks for a
turn `gap_s` after its last unit ends (the Python between two units), every unit takes
its model's `unit_s` of fake time, and the clock jumps from one event to the next.
"""

from __future__ import annotations

import heapq
import itertools

import pytest

from runtime.server.core.fair_queue import ANTICIPATE_S, PRIORITY_LEAD_S, FairQueue, Schedule


class Box:
    def __init__(self, cores: int = 2):
        self.queue = FairQueue({"cpu": cores, "gpu": 1})
        self.now = 0.0
        self.unit_s: dict[str, float] = {}
        self.gap_s: dict[str, float] = {}
        self.backlogged: set[str] = set()
        # (time, order, what, model): a unit's end, or a worker asking again after a gap
        self.events: list[tuple[float, int, str, str]] = []
        self.order = itertools.count()
        self.waits: dict[str, list[float]] = {}  # per model, each unit's wait for its turn
        self.handling_s: dict[str, float] = {}  # per unit: its requests' CPU time outside it

    def model(self, name: str, unit_s: float, share: float = 1.0, priority: int = 0,
              slots: int = 2, gap_s: float = 0.0, handling_s: float = 0.0) -> None:
        self.unit_s[name] = unit_s
        self.gap_s[name] = gap_s
        self.handling_s[name] = handling_s
        self.waits[name] = []
        self.queue.set(name, Schedule(share, priority, "cpu", slots), self.now)

    def start(self, *names: str, workers: int = 1) -> None:
        """Each of `names` becomes backlogged: `workers` units ask now, in that order, and
        each asks again as it ends."""
        for name in names:
            self.backlogged.add(name)
            for _ in range(workers):
                self.queue.want(name, self.now)
        self._grant()

    def stop(self, name: str) -> None:
        """No more work for `name` once its running units end (waiting ones are withdrawn)."""
        self.backlogged.discard(name)
        model = self.queue.models[name]
        for ticket in list(model.waiting):
            self.queue.withdraw(ticket, self.now)

    def run_until(self, t: float) -> None:
        while self.events and self.events[0][0] <= t:
            self.now, _, what, name = heapq.heappop(self.events)
            if what == "end":
                # more work is ready when the worker comes straight back (a gap of its
                # hand-off's size); a camera's next frame is not ready as one ends
                ready = name in self.backlogged and self.gap_s[name] < ANTICIPATE_S
                self.queue.done(name, self.now, more=ready)
                self.queue.charge(name, self.handling_s[name], self.now)  # its answers
                if name in self.backlogged and self.gap_s[name]:
                    self._at(self.now + self.gap_s[name], "ask", name)
                elif name in self.backlogged:
                    self.queue.want(name, self.now)
            elif name in self.backlogged:
                self.queue.want(name, self.now)
            self._grant()
        self.now = t

    def busy(self) -> dict[str, float]:
        return {name: usage.busy_s for name, usage in self.queue.usage(self.now).items()}

    def _grant(self) -> None:
        for ticket in self.queue.grant(self.now):
            self.waits[ticket.model].append(self.now - ticket.since)
            self._at(self.now + self.unit_s[ticket.model], "end", ticket.model)

    def _at(self, t: float, what: str, name: str) -> None:
        heapq.heappush(self.events, (t, next(self.order), what, name))


def fractions(busy: dict[str, float]) -> dict[str, float]:
    total = sum(busy.values())
    return {name: seconds / total for name, seconds in busy.items()}


@pytest.mark.parametrize(("vit_share", "llm_share"), [(1, 1), (3, 1), (1, 3)])
@pytest.mark.parametrize("vit_workers", [1, 2])
def test_busy_time_follows_the_shares_whatever_the_unit_sizes(vit_share, llm_share,
                                                              vit_workers):
    box = Box()
    box.model("vit", unit_s=0.006, share=vit_share)  # a batch
    box.model("llm", unit_s=0.021, share=llm_share)  # a decode step, 3.5 batches long
    box.start("vit", workers=vit_workers)
    box.start("llm")  # one loop thread: a unit at a time
    box.run_until(60.0)
    busy = box.busy()
    assert sum(busy.values()) == pytest.approx(60.0, abs=0.03)  # never idle, never both
    expected = vit_share / (vit_share + llm_share)
    # Off by at most one unit of either model over the minute.
    assert fractions(busy)["vit"] == pytest.approx(expected, abs=0.021 / 60)


def test_shares_hold_when_workers_come_back_a_little_after_each_unit():
    box = Box()
    box.model("vit", unit_s=0.006, share=3, gap_s=0.002)  # handing answers back
    box.model("llm", unit_s=0.021, share=1, gap_s=0.001)  # sampling the next tokens
    box.start("vit", "llm")
    box.run_until(60.0)
    busy = box.busy()
    assert fractions(busy)["vit"] == pytest.approx(0.75, abs=0.021 / 60)
    # The price: while the ViT is owed time, its gaps are kept for it, and the box idles
    # in them (never longer than the gap, well under ANTICIPATE_S).
    vit_units = box.queue.usage(box.now)["vit"].units
    assert sum(busy.values()) >= 60 - vit_units * 0.002 - 0.03
    assert 0.002 < ANTICIPATE_S


def test_after_a_break_a_model_stands_where_it_stood_less_nothing_for_the_idle_time():
    queue = FairQueue({"cpu": 2})
    queue.set("llm", Schedule(slots=2), 0.0)
    queue.set("vit", Schedule(slots=2), 0.0)
    queue.want("llm", 0.0)
    queue.grant(0.0)
    queue.want("vit", 0.010)  # joins level with the running LLM: 0.010
    queue.done("llm", 0.030)  # llm 0.030
    queue.want("llm", 0.030)
    assert [t.model for t in queue.grant(0.030)] == ["vit"]
    queue.done("vit", 0.035, more=True)  # vit 0.015, owed 0.015 as it stops asking
    assert queue.grant(0.035) == []  # kept for it a moment...
    (llm,) = queue.grant(0.035 + ANTICIPATE_S)  # ...then the LLM runs on alone
    queue.done("llm", 0.100)  # llm 0.030 + 0.045 = 0.075
    queue.want("llm", 0.100)
    queue.grant(0.100)
    queue.want("vit", 0.110)  # back after 75 ms away, the LLM at 0.085 by now
    assert queue.models["vit"].vtime == pytest.approx(0.085 - 0.015)  # owed what it was


def test_a_model_that_wants_less_than_its_share_is_never_waited_for():
    box = Box()
    # A camera's frame every 40 ms: the ViT wants 15 % of the box, its share is 75 %.
    box.model("vit", unit_s=0.006, share=3, gap_s=0.034)
    box.model("llm", unit_s=0.021, share=1)
    box.start("vit", "llm")
    box.run_until(60.0)
    busy = box.busy()
    assert sum(busy.values()) == pytest.approx(60.0, abs=0.03)  # the box never idles
    assert max(box.waits["vit"]) <= 0.021 + 1e-9  # a frame waits one LLM step at most


def test_slots_kept_for_a_model_that_does_not_come_back_free_after_a_moment():
    queue = FairQueue({"cpu": 2})
    queue.set("vit", Schedule(slots=2), 0.0)
    queue.set("llm", Schedule(slots=2), 0.0)
    queue.want("vit", 0.0)
    queue.want("llm", 0.0)
    assert [t.model for t in queue.grant(0.0)] == ["vit"]
    queue.done("vit", 0.010, more=True)  # virtual times: vit 0.010, llm 0
    assert [t.model for t in queue.grant(0.010)] == ["llm"]  # the LLM is owed: it goes
    queue.want("vit", 0.011)  # back within ANTICIPATE_S: keeps its place
    queue.done("llm", 0.040, more=True)  # llm 0.030
    assert [t.model for t in queue.grant(0.040)] == ["vit"]
    queue.want("llm", 0.041)
    queue.done("vit", 0.045, more=True)  # vit 0.015: owed, more is ready...
    assert queue.grant(0.045) == []  # ...so the cores are kept for it
    assert queue.next_change(0.045) == pytest.approx(0.045 + ANTICIPATE_S)
    # It never comes back: once ANTICIPATE_S has passed, the LLM goes.
    assert [t.model for t in queue.grant(0.045 + ANTICIPATE_S)] == ["llm"]
    assert queue.next_change(0.045 + ANTICIPATE_S) is None


def test_an_idle_models_share_goes_to_the_others():
    box = Box()
    box.model("vit", unit_s=0.006, share=1)
    box.model("llm", unit_s=0.021, share=3)  # configured, never asked
    box.start("vit")
    box.run_until(10.0)
    assert box.busy() == {"vit": pytest.approx(10.0), "llm": 0.0}
    assert box.waits["vit"] == [0.0] * len(box.waits["vit"])


def test_models_that_fit_together_run_together():
    box = Box(cores=2)
    box.model("vit", unit_s=0.006, share=3, slots=1)  # threads: 1
    box.model("llm", unit_s=0.021, share=1, slots=1)
    box.start("vit")
    box.start("llm")
    box.run_until(10.0)
    assert box.busy() == {"vit": pytest.approx(10.0), "llm": pytest.approx(10.0)}
    assert max(box.waits["vit"] + box.waits["llm"]) == 0.0


def test_a_model_on_every_core_is_not_starved_by_one_thread_models():
    box = Box(cores=2)
    box.model("a", unit_s=0.005, slots=1)
    box.model("b", unit_s=0.005, slots=1)
    box.model("big", unit_s=0.02, slots=2)  # threads 0: both cores
    for name in ("a", "b", "big"):
        box.start(name)
    box.run_until(30.0)
    # a and b run side by side, big alone: by time held, a third each, to one unit.
    assert fractions(box.busy()) == pytest.approx({"a": 1 / 3, "b": 1 / 3, "big": 1 / 3},
                                                  abs=0.02 / 30)


def test_a_model_that_becomes_active_gets_no_credit_for_its_idle_time():
    box = Box()
    box.model("vit", unit_s=0.006)
    box.model("llm", unit_s=0.021)
    box.start("vit")
    box.run_until(10.0)  # the LLM idle for 10 s
    before = box.busy()
    box.start("llm")
    box.run_until(12.0)
    after = box.busy()
    gained = {name: after[name] - before[name] for name in after}
    # Banked credit would give the LLM the next 2 s whole; it gets half, to one unit.
    assert gained["llm"] == pytest.approx(1.0, abs=0.021)
    assert sum(gained.values()) == pytest.approx(2.0)


def test_a_model_back_from_idle_rejoins_at_the_fair_point_not_behind_it():
    box = Box()
    box.model("vit", unit_s=0.006)
    box.model("llm", unit_s=0.021)
    box.start("vit")
    box.start("llm")
    box.run_until(4.0)
    box.stop("llm")
    box.run_until(9.0)  # 5 s of the ViT alone
    box.start("llm")
    mark = box.busy()
    box.run_until(11.0)
    end = box.busy()
    assert end["llm"] - mark["llm"] == pytest.approx(1.0, abs=0.021)


def test_priority_serves_first_then_takes_turns_within_its_lead():
    box = Box()
    box.model("vit", unit_s=0.006, priority=1)
    box.model("llm", unit_s=0.021)
    box.start("llm", "vit", workers=2)
    box.run_until(0.5 * PRIORITY_LEAD_S)  # the ViT asked second and still went first
    assert box.busy()["llm"] == 0.0 and box.waits["vit"][0] == 0.0
    box.run_until(60.0)
    busy = box.busy()
    # Over time the shares hold: the lead is a bound, not a rate.
    assert busy["vit"] - busy["llm"] == pytest.approx(PRIORITY_LEAD_S, abs=0.021 + 0.006)
    # The LLM's unit never waits longer than the lead plus one ViT unit.
    assert max(box.waits["llm"]) <= PRIORITY_LEAD_S + 0.006 + 1e-9


def test_a_higher_share_with_priority_keeps_its_share():
    box = Box()
    box.model("vit", unit_s=0.006, share=3, priority=2)
    box.model("llm", unit_s=0.021, share=1)
    box.start("vit", workers=2)
    box.start("llm")
    box.run_until(60.0)
    assert fractions(box.busy())["vit"] == pytest.approx(0.75, abs=0.01)
    # bound: the lead of two levels, in the ViT's busy seconds (share 3), plus a unit
    assert max(box.waits["llm"]) <= 2 * PRIORITY_LEAD_S * 3 + 0.006 + 1e-9


def test_a_share_changed_while_running_holds_from_then_on():
    box = Box()
    box.model("vit", unit_s=0.006)
    box.model("llm", unit_s=0.021)
    box.start("vit", workers=2)
    box.start("llm")
    box.run_until(20.0)
    mark = box.busy()
    box.queue.set("vit", Schedule(3.0, 0, "cpu", 2), box.now)  # SIGHUP: vit 3, llm 1
    box.run_until(60.0)
    end = box.busy()
    window = {name: end[name] - mark[name] for name in end}
    assert fractions(window)["vit"] == pytest.approx(0.75, abs=0.003)


def test_request_handling_is_charged_to_the_models_share():
    """A ViT whose requests cost the event loop one core for as long as its batch runs on
    two: at 1:1 its batches get a third less of the box than the LLM's steps, and
    holds plus handling (spread over its two slots) split 50 / 50."""
    box = Box()
    box.model("vit", unit_s=0.006, handling_s=0.006)  # 6 ms of one core per batch
    box.model("llm", unit_s=0.021)
    box.start("vit", "llm")
    box.run_until(60.0)
    usage = box.queue.usage(box.now)
    busy = box.busy()
    assert fractions(busy)["vit"] == pytest.approx(1 / 2.5, abs=0.021 / 60)
    assert usage["vit"].handling_s == pytest.approx(usage["vit"].units * 0.006)
    assert usage["llm"].handling_s == 0.0
    charged = {"vit": busy["vit"] + usage["vit"].handling_s / 2, "llm": busy["llm"]}
    assert fractions(charged)["vit"] == pytest.approx(0.5, abs=0.021 / 60)


def two_cpu_models_and_a_gpu_one(first: str, second: str) -> FairQueue:
    """A 2-core box with a GPU: `first` and `second` on both cores, "trt" on the GPU."""
    queue = FairQueue({"cpu": 2, "gpu": 1})
    queue.set(first, Schedule(slots=2), 0.0)
    queue.set(second, Schedule(slots=2), 0.0)
    queue.set("trt", Schedule(resource="gpu"), 0.0)
    return queue


def test_handling_charged_while_idle_counts_when_the_model_comes_back():
    queue = two_cpu_models_and_a_gpu_one("llm", "vit")
    queue.want("llm", 0.0)
    queue.grant(0.0)
    queue.charge("vit", 0.060, 0.0)  # parsing and decoding its first requests, idle
    queue.want("vit", 0.010)  # level with the LLM (0.010) plus its 0.030 charged: 0.040
    queue.want("llm", 0.010)
    queue.done("llm", 0.030)  # llm 0.030: it goes again (uncharged, the ViT would: 0.010)
    assert [t.model for t in queue.grant(0.030)] == ["llm"]
    assert queue.models["vit"].vtime == pytest.approx(0.040)
    queue.charge("trt", 1.0, 0.030)  # a GPU model's handling is counted, moves nothing
    queue.charge("gone", 1.0, 0.030)  # a model unloaded meanwhile: ignored
    assert queue.usage(0.030)["trt"].handling_s == 1.0
    assert queue.models["trt"].vtime == 0.0


def test_shed_requests_are_counted_per_model():
    queue = FairQueue({"cpu": 2})
    queue.set("llm", Schedule(slots=2), 0.0)
    queue.set("vit", Schedule(slots=2), 0.0)
    queue.want("vit", 0.0)
    (running,) = queue.grant(0.0)
    waiting = queue.want("llm", 0.1)
    assert queue.grant(0.1) == []  # the ViT holds both cores
    queue.withdraw(waiting, 0.2)  # its deadline passed while it waited
    queue.shed("llm", 1)
    queue.done("vit", 0.5)
    usage = queue.usage(0.5)
    assert (usage["llm"].shed, usage["llm"].units, usage["llm"].waiting) == (1, 0, 0)
    assert (usage["vit"].shed, usage["vit"].units, usage["vit"].busy_s) == (0, 1, 0.5)


def test_a_withdrawn_head_lets_the_next_one_start():
    queue = FairQueue({"cpu": 2})
    for name, slots in (("a", 1), ("big", 2), ("c", 1)):
        queue.set(name, Schedule(slots=slots), 0.0)
    queue.want("a", 0.0)
    assert len(queue.grant(0.0)) == 1  # a runs on one core
    big = queue.want("big", 0.0)
    queue.want("c", 0.0)
    assert queue.grant(0.0) == []  # c fits, but does not overtake big
    queue.withdraw(big, 0.0)
    (granted,) = queue.grant(0.0)
    assert granted.model == "c"


def test_a_gpu_model_does_not_wait_behind_the_cpus_order():
    queue = two_cpu_models_and_a_gpu_one("a", "big")
    queue.want("a", 0.0)
    queue.grant(0.0)  # a holds both cores
    queue.want("big", 0.0)  # next in order, waits for the cores
    queue.want("trt", 0.0)
    assert [t.model for t in queue.grant(0.0)] == ["trt"]  # the GPU is free: it goes


def test_slots_beyond_the_box_are_fitted_and_bad_schedules_refused():
    queue = FairQueue({"cpu": 2})
    queue.set("greedy", Schedule(slots=8), 0.0)  # threads: 8 on a 2-core box
    assert queue.models["greedy"].schedule.slots == 2
    with pytest.raises(ValueError, match="no gpu"):
        queue.set("trt", Schedule(resource="gpu"), 0.0)
    with pytest.raises(ValueError, match="share must be > 0"):
        Schedule(share=0)
