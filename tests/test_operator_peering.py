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

    cluster = PeeringGate(Peering("p", "me", 10))
    assert not cluster.active(NOW)  # the peering object not read yet: stand by, as kopf starts paused
    cluster.update(None, {"me": peer(10)})
    assert cluster.active(NOW)
    cluster.update(None, {"me": peer(10), "other": peer(20)})
    assert not cluster.active(NOW)
    assert cluster.active(NOW + timedelta(seconds=56))  # the other's lifetime ran out
    cluster.update(None, None)  # its watch broke
    assert not cluster.active(NOW)

    spread = PeeringGate(Peering("p", "me", 10, ("a", "b")))
    spread.update("a", {})
    assert not spread.active(NOW)  # b unknown
    spread.update("b", {"other": peer(3)})
    assert spread.active(NOW)
    spread.update("a", {"other": peer(30)})
    assert not spread.active(NOW)  # outranked in any of them: stand by
