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
    """Open while this replica is the one that works. Standalone (no peering): always open."""

    def __init__(self, peering: Peering | None) -> None:
        self.peering = peering
        self._lock = threading.Lock()
        # per peering object: its status, or None while unknown (not read yet, or its watch broke)
        self._status: dict[str | None, dict[str, Any] | None] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._was: bool | None = None

    def active(self, now: datetime | None = None) -> bool:
        if self.peering is None:
            return True
        now = now or datetime.now(UTC)
        with self._lock:
            known = dict(self._status)
        places: list[str | None] = [*self.peering.namespaces] or [None]
        if any(known.get(p) is None for p in places):
            return False  # not seen yet: stand by, as kopf starts paused
        ahead = [
            peer
            for p in places
            for peer in outranked_by(known[p] or {}, self.peering.identity, self.peering.priority, now)
        ]
        working = not ahead
        if working != self._was:
            self._was = working
            if working:
                log.info(
                    "working: no live peer outranks %s (priority %d)", self.peering.identity, self.peering.priority
                )
            else:
                log.info("standing by for %s", ", ".join(sorted(set(ahead))))
        return working

    def update(self, namespace: str | None, status: dict[str, Any] | None) -> None:
        with self._lock:
            self._status[namespace] = status

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
                    log.warning("peering %s%s does not exist (the chart creates it); standing by", self.peering.name,
                                f" in {namespace}" if namespace else "")  # fmt: skip
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
                    obj = event["object"]
                    self.update(namespace, None if event["type"] == "DELETED" else _status_of([obj]))
            except Exception as err:  # the API server away, the CRD missing: stand by until read again
                self.update(namespace, None)
                log.warning("peering %s%s not readable (%s); standing by", self.peering.name,
                            f" in {namespace}" if namespace else "", err)  # fmt: skip
                self._stop.wait(2.0)


def _status_of(items: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A peering object's status ({} when it has none); None when the object is absent."""
    for item in items:
        status: dict[str, Any] = item.get("status") or {}
        return status
    return None
