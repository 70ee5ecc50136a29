"""One working replica: kopf's peering rule applied to the operator's own loops.

With `--peering`, every replica registers in kopf's peering object(s) (`ClusterKopfPeering`, or a
`KopfPeering` per watched namespace) with its priority; kopf pauses its watch streams while a live peer
has a higher or the same priority. The operator also reconciles from its own loops beside kopf (the
resync of every VideoFineTune, the requeues a plan asks for, a new progress record), and those would go on
from a frozen index in a paused replica. `PeeringGate` applies kopf's rule to every reconcile: it watches
the same peering object(s) and is open only while no live peer outranks this replica.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

log = logging.getLogger("disney_operator.peering")
GROUP, VERSION = "kopf.dev", "v1"
WATCH_SECONDS = 300  # each watch is renewed this often (and after any error)
SETTLE_SECONDS = 5.0  # own entry live this long before working: peers started at once have registered
REQUEST_TIMEOUT = 30  # a list that hangs must not freeze the gate's view


@dataclass(frozen=True)
class Peering:
    """Which peering object(s) this replica takes part in, as whom and with which priority."""

    name: str
    identity: str
    priority: int
    namespaces: tuple[str, ...] = ()  # empty: the cluster-wide ClusterKopfPeering


def deadline(info: Any) -> datetime | None:
    """When a peer's entry, as kopf writes it, stops being live (lastseen + lifetime); None if malformed."""
    try:
        seen = datetime.fromisoformat(str(info["lastseen"]))
        return (seen if seen.tzinfo else seen.replace(tzinfo=UTC)) + timedelta(seconds=int(info["lifetime"]))
    except (KeyError, TypeError, ValueError):
        return None


def outranked_by(status: dict[str, Any], identity: str, priority: int, now: datetime) -> list[str]:
    """The live peers in a peering object's status that make this replica stand by (kopf's rule: a
    higher priority, or the same, which pauses both). A peer is live until lastseen + lifetime."""
    out = []
    for peer, info in (status or {}).items():
        if peer == identity or not isinstance(info, dict):
            continue
        until = deadline(info)
        try:
            rank = int(info["priority"])
        except (KeyError, TypeError, ValueError):
            continue  # not a peer kopf wrote
        if until is not None and until >= now and rank >= priority:
            out.append(peer)
    return out


class PeeringGate:
    """Open while this replica is the one that works. Standalone (no peering): always open.

    Open when, in every peering object: no live peer outranks this replica (kopf's rule), its own entry
    is live (its keepalives land), it has been for SETTLE_SECONDS (peers started at the same moment have
    registered by then), and the object was read within its entry's lifetime.

    kopf keeps its index across a pause and never drops what was deleted meanwhile, so a replica whose
    kopf may have run (no peer outranked it at some point) and that is then outranked, or that worked and
    then lost its own entry or its view of the object, calls `on_lost` (the operator exits, to be
    restarted clean). With oldest-first priorities that happens to the younger of two replicas started
    at once, and to a replica cut off long enough for another to take over."""

    def __init__(
        self,
        peering: Peering | None,
        on_lost: Callable[[str], None] | None = None,
        on_working: Callable[[], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.peering = peering
        self.on_lost, self.on_working, self.clock = on_lost, on_working, clock
        self._lock = threading.Lock()
        # per peering object: its last status read, and when it was read; absent until first read
        self._status: dict[str | None, dict[str, Any]] = {}
        self._read_at: dict[str | None, datetime] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._was = False
        self._own_since: datetime | None = None
        self._kopf_ran = False  # no peer outranked this one at some moment: kopf's streams may have run
        self._lost = False

    def active(self) -> bool:
        if self.peering is None:
            return True
        me = self.peering
        now = self.clock()
        with self._lock:
            if self._lost:
                return False
            places: list[str | None] = [*me.namespaces] or [None]
            known = all(p in self._status for p in places)
            ahead = sorted(
                {peer for p in places if p in self._status
                 for peer in outranked_by(self._status[p], me.identity, me.priority, now)}
            )  # fmt: skip
            until = [deadline(self._status[p].get(me.identity)) for p in places if p in self._status]
            own_live = known and all(u is not None and u >= now for u in until)
            lifetime = max((int(self._status[p][me.identity].get("lifetime", 60)) for p in places
                            if own_live and p in self._status), default=60)  # fmt: skip
            fresh = known and all(now - self._read_at[p] <= timedelta(seconds=lifetime) for p in places)
            self._kopf_ran = self._kopf_ran or (known and not ahead)
            self._own_since = (self._own_since or now) if own_live else None
            settled = self._own_since is not None and now - self._own_since >= timedelta(seconds=SETTLE_SECONDS)
            working = known and not ahead and own_live and fresh and settled
            was, self._was = self._was, working
            lost = ""
            if ahead and self._kopf_ran:
                lost = f"outranked by {', '.join(ahead)}"
            elif was and not working:
                lost = "its own peering entry or its view of the peering object was lost"
            if lost:
                self._lost = True
        if lost:
            log.error("%s after kopf may have run: stopping, to be restarted clean", lost)
            if self.on_lost is not None:
                self.on_lost(lost)
            return False
        if working and not was:
            log.info("working: no live peer outranks %s (priority %d)", me.identity, me.priority)
            if self.on_working is not None:
                self.on_working()
        elif ahead and not was and not self._kopf_ran:
            log.debug("standing by for %s", ", ".join(ahead))
        return working

    def update(self, namespace: str | None, status: dict[str, Any]) -> None:
        """A peering object's status as read; the gate re-evaluates at once."""
        with self._lock:
            self._status[namespace] = status
            self._read_at[namespace] = self.clock()
        self.active()

    def tick(self) -> None:
        """Re-evaluate without news (a peer's lifetime running out, this replica's settling)."""
        self.active()

    def start(self, custom_objects_api: Any) -> None:
        """Watch each peering object in a daemon thread (kubernetes client CustomObjectsApi), and
        re-evaluate every second."""
        if self.peering is None:
            return
        for namespace in self.peering.namespaces or (None,):
            t = threading.Thread(
                target=self._watch, args=(custom_objects_api, namespace), name=f"peering-{namespace}", daemon=True
            )
            t.start()
            self._threads.append(t)
        ticker = threading.Thread(target=self._tick, name="peering-tick", daemon=True)
        ticker.start()
        self._threads.append(ticker)

    def forget(self, namespace: str | None) -> None:
        """The peering object is gone: stand by (and, having worked, stop) until it is back."""
        with self._lock:
            self._status.pop(namespace, None)
            self._read_at.pop(namespace, None)
        self.active()

    def stop(self) -> None:
        self._stop.set()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            self.tick()

    def _watch(self, custom: Any, namespace: str | None) -> None:
        from kubernetes import watch

        assert self.peering is not None
        selector = f"metadata.name={self.peering.name}"
        if namespace is None:
            args: tuple[Any, ...] = (GROUP, VERSION, "clusterkopfpeerings")
            lister: Callable[..., Any] = custom.list_cluster_custom_object
        else:
            args = (GROUP, VERSION, namespace, "kopfpeerings")
            lister = custom.list_namespaced_custom_object
        while not self._stop.is_set():
            try:
                listed = lister(*args, field_selector=selector, _request_timeout=REQUEST_TIMEOUT)
                status = _status_of(listed.get("items", []))
                if status is None:
                    self.forget(namespace)
                    log.warning("peering %s%s does not exist (the chart creates it); standing by", self.peering.name,
                                f" in {namespace}" if namespace else "")  # fmt: skip
                    self._stop.wait(5.0)
                    continue
                self.update(namespace, status)
                stream: Iterable[dict[str, Any]] = watch.Watch().stream(
                    lister,
                    *args,
                    field_selector=selector,
                    resource_version=listed["metadata"]["resourceVersion"],
                    timeout_seconds=WATCH_SECONDS,
                    _request_timeout=(REQUEST_TIMEOUT, WATCH_SECONDS + REQUEST_TIMEOUT),
                )
                for event in stream:
                    if self._stop.is_set():
                        return
                    if event["type"] == "DELETED":
                        self.forget(namespace)
                    else:
                        self.update(namespace, _status_of([event["object"]]) or {})
            except Exception as err:  # the API server away, a 410 (too old), the CRD missing: read again;
                # meanwhile the last status holds (as in kopf) and the peers' deadlines age it out
                log.warning("peering %s%s not readable (%s); reading again", self.peering.name,
                            f" in {namespace}" if namespace else "", err)  # fmt: skip
                self._stop.wait(2.0)


def _status_of(items: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A peering object's status ({} when it has none); None when the object is absent."""
    for item in items:
        status: dict[str, Any] = item.get("status") or {}
        return status
    return None
