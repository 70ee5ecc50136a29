"""kopf's peering rule as the operator's own loops apply it (PeeringGate); the rendered chart runs two
real replicas in tests/test_chart_operator.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from disney_operator.peering import SETTLE_SECONDS, Peering, PeeringGate, outranked_by

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def peer(priority: int, seen_ago: float = 5, lifetime: int = 60) -> dict[str, object]:
    return {"priority": priority, "lastseen": (NOW - timedelta(seconds=seen_ago)).isoformat(), "lifetime": lifetime}


def test_outranked_by_higher_or_equal_live_peers_only() -> None:
    status = {
        "me": peer(10),
        "higher": peer(11),
        "same": peer(10),
        "lower": peer(9),
        "higher-but-dead": peer(99, seen_ago=61),
        "naive-time": {"priority": 12, "lastseen": "2026-12-01T11:59:50", "lifetime": 60},
        "not-kopf": {"priority": "x"},
        "junk": "?",
    }
    assert sorted(outranked_by(status, "me", 10, NOW)) == ["higher", "naive-time", "same"]
    assert outranked_by(status, "me", 100, NOW) == []
    assert outranked_by({}, "me", 0, NOW) == []


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def me(clock: Clock, priority: int = 10) -> dict[str, object]:
    """This replica's own entry, as its kopf keeps it: refreshed at every call."""
    return {"priority": priority, "lastseen": clock.now.isoformat(), "lifetime": 60}


def test_the_gate_works_once_settled_alone_and_stands_by_for_an_older_peer() -> None:
    assert PeeringGate(None).active()  # standalone: always works

    clock, lost, took_over = Clock(), list[str](), list[int]()
    gate = PeeringGate(Peering("p", "me", 10), on_lost=lost.append, on_working=lambda: took_over.append(1), clock=clock)
    assert not gate.active()  # the peering object not read yet: stand by, as kopf starts paused
    gate.update(None, {"other": peer(20)})
    assert not gate.active()  # this replica's own entry not there yet
    gate.update(None, {"me": me(clock), "other": peer(20)})
    assert not gate.active() and lost == []  # standing by from the start is not losing anything
    clock.advance(56)  # the other's lifetime ran out (it died without a goodbye): take over
    gate.update(None, {"me": me(clock), "other": peer(20)})
    assert gate.active() and took_over == [1]  # working, and the taking over announced once
    assert gate.active() and took_over == [1]
    assert lost == []

    alone = PeeringGate(Peering("p", "me", 10), clock=clock)
    alone.update(None, {"me": me(clock)})
    assert not alone.active()  # settling: a peer started at the same moment may still register
    clock.advance(SETTLE_SECONDS)
    alone.tick()
    assert alone.active()


def test_an_older_peer_coming_back_stops_the_replica_whose_kopf_ran() -> None:
    clock, lost = Clock(), list[str]()
    gate = PeeringGate(Peering("p", "me", 10), on_lost=lost.append, clock=clock)
    gate.update(None, {"me": me(clock)})
    clock.advance(SETTLE_SECONDS)
    gate.update(None, {"me": me(clock)})
    assert gate.active()
    gate.update(None, {"me": me(clock), "back": {**me(clock), "priority": 30}})
    assert lost == ["outranked by back"] and not gate.active()
    gate.update(None, {"me": me(clock)})
    assert not gate.active() and len(lost) == 1  # once: the process is stopping


def test_two_started_at_once_the_younger_stops_if_its_kopf_ran() -> None:
    """Registered first but younger: kopf resumed it for a moment (its index may keep what is deleted
    later), so it stops when the older one shows up, even though its gate never opened."""
    clock, lost = Clock(), list[str]()
    gate = PeeringGate(Peering("p", "young", 10), on_lost=lost.append, clock=clock)
    gate.update(None, {"young": me(clock)})
    clock.advance(2)
    gate.update(None, {"young": me(clock), "old": {**me(clock), "priority": 11}})
    assert lost == ["outranked by old"]


def test_a_working_replica_that_loses_its_entry_or_its_view_stops() -> None:
    for what in ("entry cleaned away", "keepalives not landing", "no read for a lifetime", "object deleted"):
        clock, lost = Clock(), list[str]()
        gate = PeeringGate(Peering("p", "me", 10), on_lost=lost.append, clock=clock)
        gate.update(None, {"me": me(clock)})
        clock.advance(SETTLE_SECONDS)
        gate.update(None, {"me": me(clock)})
        assert gate.active(), what
        if what == "entry cleaned away":
            gate.update(None, {"other": peer(3)})
        elif what == "keepalives not landing":
            own = me(clock)
            clock.advance(61)
            gate.update(None, {"me": own})
        elif what == "no read for a lifetime":
            clock.advance(61)
            gate.tick()
        else:
            gate.forget(None)
        assert not gate.active() and len(lost) == 1, what


def test_every_peering_object_counts() -> None:
    clock = Clock()
    spread = PeeringGate(Peering("p", "me", 10, ("a", "b")), clock=clock)
    spread.update("a", {"me": me(clock)})
    clock.advance(SETTLE_SECONDS)
    assert not spread.active()  # b not read yet
    spread.update("b", {"me": me(clock), "other": peer(3)})
    clock.advance(SETTLE_SECONDS)
    spread.update("a", {"me": me(clock)})
    spread.update("b", {"me": me(clock), "other": peer(3)})
    assert spread.active()
    spread.update("a", {"me": me(clock), "other": {**me(clock), "priority": 30}})
    assert not spread.active()  # outranked in any of them: stand by
