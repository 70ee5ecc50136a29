"""kopf's peering rule as the operator's own loops apply it (PeeringGate); the rendered chart runs two
real replicas in tests/test_chart_operator.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from disney_operator.peering import Peering, PeeringGate, outranked_by

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


def test_the_gate() -> None:
    assert PeeringGate(None).active()  # standalone: always works

    now = [NOW]
    outranked: list[list[str]] = []
    cluster = PeeringGate(Peering("p", "me", 10), on_outranked=outranked.append, clock=lambda: now[0])
    assert not cluster.active()  # the peering object not read yet: stand by, as kopf starts paused
    cluster.update(None, {"me": peer(10), "other": peer(20)})
    assert not cluster.active()
    assert outranked == []  # standing by from the start is not being outranked
    now[0] = NOW + timedelta(seconds=56)  # the other's lifetime ran out: take over
    assert cluster.active()
    now[0] = NOW
    cluster.update(None, {"me": peer(10)})
    assert cluster.active()
    cluster.update(None, {"me": peer(10), "back": peer(30)})  # an older one it took for dead
    assert outranked == [["back"]]  # once, at the update itself: the operator restarts clean
    assert not cluster.active()
    assert outranked == [["back"]]
    cluster.forget(None)  # the peering object deleted
    assert not cluster.active()

    spread = PeeringGate(Peering("p", "me", 10, ("a", "b")), clock=lambda: NOW)
    spread.update("a", {})
    assert not spread.active()  # b not read yet
    spread.update("b", {"other": peer(3)})
    assert spread.active()
    spread.update("a", {"other": peer(30)})
    assert not spread.active()  # outranked in any of them: stand by
