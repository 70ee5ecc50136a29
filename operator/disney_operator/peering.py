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


@dataclass(frozen=True)
class Peering:
    """Which peering object(s) this replica takes part in, as whom and with which priority."""

    name: str
    identity: str
    priority: int
    namespaces: tuple[str, ...] = ()  # empty: the cluster-wide ClusterKopfPeering


def outranked_by(status: dict[str, Any], identity: str, priority: int, now: datetime) -> list[str]:
    """The live peers in a peering object's status that make this replica stand by (kopf's rule: a
    higher priority, or the same, which pauses both). A peer is live until lastseen + lifetime."""
    out = []
    for peer, info in (status or {}).items():
        if peer == identity or not isinstance(info, dict):
            continue
        try:
            seen = datetime.fromisoformat(str(info["lastseen"]))
            deadline = (seen if seen.tzinfo else seen.replace(tzinfo=UTC)) + timedelta(seconds=int(info["lifetime"]))
            rank = int(info["priority"])
        except (KeyError, TypeError, ValueError):
            continue  # not a peer kopf wrote
        if deadline >= now and rank >= priority:
            out.append(peer)
    return out


class PeeringGate:
    """Open while this replica is the one that works. Standalone (no peering): always open.

    A replica that worked and is then outranked calls `on_outranked` once (the operator exits, to be
    restarted clean): kopf keeps its index across a pause and never drops what was deleted meanwhile,
    so a replica that resumed after a pause would reconcile objects that are gone. With the chart's
    oldest-first priorities a working replica is outranked only when an older one it had taken for
    dead comes back."""

    def __init__(
        self,
        peering: Peering | None,
        on_outranked: Callable[[list[str]], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.peering = peering
        self.on_outranked, self.clock = on_outranked, clock
        self._lock = threading.Lock()
        # per peering object: its last status read; absent until first read
        self._status: dict[str | None, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._was: bool | None = None

    def active(self) -> bool:
        if self.peering is None:
            return True
        now = self.clock()
        with self._lock:
            known = dict(self._status)
            places: list[str | None] = [*self.peering.namespaces] or [None]
            if any(p not in known for p in places):
                return False  # not read yet: stand by, as kopf starts paused
            ahead = sorted(
                {
                    peer
                    for p in places
                    for peer in outranked_by(known[p], self.peering.identity, self.peering.priority, now)
                }
            )
            working, was = not ahead, self._was
            self._was = working
        if working and was is not True:
            log.info("working: no live peer outranks %s (priority %d)", self.peering.identity, self.peering.priority)
        elif not working and was is not False:
            log.info("standing by for %s", ", ".join(ahead))
            if was is True and self.on_outranked is not None:
                self.on_outranked(ahead)
        return working

    def update(self, namespace: str | None, status: dict[str, Any]) -> None:
        """A peering object's status as read; the gate re-evaluates at once (an outranked worker stops)."""
        with self._lock:
            self._status[namespace] = status
        self.active()

    def start(self, custom_objects_api: Any) -> None:
        """Watch each peering object in a daemon thread (kubernetes client CustomObjectsApi)."""
        if self.peering is None:
            return
        for namespace in self.peering.namespaces or (None,):
            t = threading.Thread(
                target=self._watch, args=(custom_objects_api, namespace), name=f"peering-{namespace}", daemon=True
            )
            t.start()
            self._threads.append(t)

    def forget(self, namespace: str | None) -> None:
        with self._lock:
            self._status.pop(namespace, None)

    def stop(self) -> None:
        self._stop.set()

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
                listed = lister(*args, field_selector=selector)
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
