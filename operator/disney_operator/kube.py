"""The operator's writes to the API server (the official Kubernetes client), each counted.

VideoFineTunes, RayJobs, RayClusters and the runs' ConfigMaps and NetworkPolicies, plus best-effort Events:
an Event that cannot be written (no core/v1, no permission) is logged and never fails a reconcile.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import threading
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from disney_operator import api
from disney_operator.queue import JOB_UID_LABEL, KUEUE_GROUP, KUEUE_VERSION, VISIBILITY_GROUP, WORKLOADS
from disney_operator.rayjob import RAY_GROUP, RAY_VERSION, RAYCLUSTERS, RAYJOBS, WORKER_GROUP
from disney_operator.reconcile import Event
from disney_operator.status import rfc3339

log = logging.getLogger(__name__)


TIMEOUT = 30  # seconds for any one API request: a hung connection must not hold a VideoFineTune's lock


class ConflictError(RuntimeError):
    """The object changed since it was read (409): re-read and reconcile again."""


class RefusedError(RuntimeError):
    """The API server refused an object the operator built (400, 422: a field it cannot hold); the message
    is the server's, with the object named."""


# A server-side apply whose object does not fit the schema's types is answered 500, not 422 (seen on the
# API server: "failed to create typed patch object (...): <field>: expected map, got ...").
TYPED_PATCH = "failed to create typed patch object"


def _refusal(what: str, err: ApiException) -> RefusedError | None:
    try:
        message = str(json.loads(err.body or "{}").get("message") or err.reason)
    except ValueError:
        message = str(err.reason)
    if err.status in (400, 422) or (err.status == 500 and TYPED_PATCH in message):
        return RefusedError(f"the API server refused {what}: {message}")
    return None


def load_client(kubeconfig: str | None = None, pool: int = 16) -> Any:
    """An ApiClient from the in-cluster service account, else KUBECONFIG / ~/.kube/config."""
    from kubernetes import config

    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)
    except config.ConfigException:
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    cfg.connection_pool_maxsize = pool
    return client.ApiClient(cfg)


class Kube:
    def __init__(self, api_client: Any, field_manager: str) -> None:
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.networking = client.NetworkingV1Api(api_client)
        self.field_manager = field_manager
        self.writes: Counter[str] = Counter()  # "<verb> <resource>" -> count
        self._counting = threading.Lock()
        self._events_broken = False
        self._workloads_refused = False
        self._instance = os.environ.get("HOSTNAME") or socket.gethostname()

    def _count(self, what: str) -> None:
        with self._counting:  # from many reconcile threads; += on a Counter is not atomic
            self.writes[what] += 1

    # --------------------------------------------------------------------- RayJobs, RayClusters
    def _apply(self, what: str, patch: Any, body: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply under one field manager (the operator owns exactly the fields it sets) by
        `patch(name, namespace, body, ...)`; returns the object as stored. A refusal raises RefusedError."""
        meta = body["metadata"]
        self._count(f"apply {what}")
        try:
            response = patch(
                meta["name"],
                meta["namespace"],
                body,
                field_manager=self.field_manager,
                force=True,
                _content_type="application/apply-patch+yaml",
                _preload_content=False,  # the client does not decode an apply's answer
                _request_timeout=TIMEOUT,
            )
        except ApiException as err:
            raise _refusal(f"{body['kind']} {meta['name']}", err) or err from None
        result: dict[str, Any] = json.loads(response.data)
        return result

    def apply_rayjob(self, body: dict[str, Any]) -> dict[str, Any]:
        def patch(name: str, namespace: str, *args: Any, **kwargs: Any) -> Any:
            return self.custom.patch_namespaced_custom_object(
                RAY_GROUP, RAY_VERSION, namespace, RAYJOBS, name, *args, **kwargs
            )

        return self._apply("rayjobs", patch, body)

    def delete_rayjob(self, namespace: str, name: str) -> None:
        self._count("delete rayjobs")
        try:
            self.custom.delete_namespaced_custom_object(
                RAY_GROUP,
                RAY_VERSION,
                namespace,
                RAYJOBS,
                name,
                propagation_policy="Background",
                _request_timeout=TIMEOUT,
            )
        except ApiException as err:
            if err.status != 404:
                raise

    def workloads(self, namespace: str, rayjob_uid: str) -> list[dict[str, Any]]:
        """Kueue's Workloads of a queued RayJob (a read: Kueue labels each with its job's uid). None on a
        cluster without Kueue (404) or where the operator may not read them (403, said once in the log): the
        run's status then says that no Workload was seen."""
        self._count("list workloads")
        try:
            found = self.custom.list_namespaced_custom_object(
                KUEUE_GROUP,
                KUEUE_VERSION,
                namespace,
                WORKLOADS,
                label_selector=f"{JOB_UID_LABEL}={rayjob_uid}",
                _request_timeout=TIMEOUT,
            )
        except ApiException as err:
            if err.status == 403 and not self._workloads_refused:
                log.warning("may not list Kueue's Workloads in %s: the chart's kueue.enabled grants it", namespace)
                self._workloads_refused = True
            if err.status in (403, 404):
                return []
            raise
        items: list[dict[str, Any]] = found.get("items") or []
        return items

    def pending_workloads(self, namespace: str, queue: str) -> list[dict[str, Any]]:
        """The Workloads waiting in a LocalQueue, with their places (Kueue's visibility API, an aggregated API;
        none where it is not served or not allowed: the status then shows no place)."""
        self._count("get localqueues/pendingworkloads")
        try:
            found = self.custom.api_client.call_api(
                f"/apis/{VISIBILITY_GROUP}/{KUEUE_VERSION}/namespaces/{{namespace}}/localqueues/{{name}}/pendingworkloads",
                "GET",
                path_params={"namespace": namespace, "name": queue},
                response_types_map={200: "object"},
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
                _request_timeout=TIMEOUT,
            )
        except ApiException as err:  # a place in the queue is for information: never a failed reconcile
            log.debug("pendingworkloads of %s/%s: %s %s", namespace, queue, err.status, err.reason)
            return []
        items: list[dict[str, Any]] = (found or {}).get("items") or []
        return items

    # ------------------------------------------------- the runs' ConfigMaps and NetworkPolicies
    def _delete_builtin(self, what: str, delete: Any, namespace: str, name: str) -> None:
        """Deleted, or already gone."""
        self._count(f"delete {what}")
        try:
            delete(name, namespace, _request_timeout=TIMEOUT)
        except ApiException as err:
            if err.status != 404:
                raise

    def apply_config_map(self, body: dict[str, Any]) -> None:
        self._apply("configmaps", self.core.patch_namespaced_config_map, body)

    def delete_config_map(self, namespace: str, name: str) -> None:
        self._delete_builtin("configmaps", self.core.delete_namespaced_config_map, namespace, name)

    def apply_network_policy(self, body: dict[str, Any]) -> None:
        self._apply("networkpolicies", self.networking.patch_namespaced_network_policy, body)

    def delete_network_policy(self, namespace: str, name: str) -> None:
        self._delete_builtin("networkpolicies", self.networking.delete_namespaced_network_policy, namespace, name)

    def secret_data(self, namespace: str, name: str) -> dict[str, str]:
        """A Secret's data, decoded (for the progress reads: never logged, never written anywhere)."""
        self._count("get secrets")
        try:
            secret = self.core.read_namespaced_secret(name, namespace, _request_timeout=TIMEOUT)
        except ApiException as err:  # its status and reason only (the body of a refusal says no more)
            raise LookupError(f"Secret {namespace}/{name}: {err.status} {err.reason}") from None
        return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}

    def scale_raycluster(self, namespace: str, name: str, replicas: int) -> None:
        """The worker group's replicas and cap (the group's identity tested first)."""
        ops = [
            {"op": "test", "path": "/spec/workerGroupSpecs/0/groupName", "value": WORKER_GROUP},
            {"op": "replace", "path": "/spec/workerGroupSpecs/0/replicas", "value": replicas},
            {"op": "replace", "path": "/spec/workerGroupSpecs/0/maxReplicas", "value": replicas},
        ]
        self._count("patch rayclusters")
        self.custom.patch_namespaced_custom_object(
            RAY_GROUP,
            RAY_VERSION,
            namespace,
            RAYCLUSTERS,
            name,
            ops,
            _content_type="application/json-patch+json",
            _request_timeout=TIMEOUT,
        )

    # --------------------------------------------------------------------- VideoFineTunes
    def _vft_call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self._count(what)
        try:
            return fn(api.GROUP, api.VERSION, *args, _request_timeout=TIMEOUT, **kwargs)
        except ApiException as err:
            if err.status == 409:
                raise ConflictError(f"{what}: the object changed since it was read") from None
            raise

    def replace_status(self, vft: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        """The whole status, only if the object is still the one read (resourceVersion): 409 otherwise."""
        meta = vft["metadata"]
        body = {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "metadata": {
                "name": meta["name"],
                "namespace": meta["namespace"],
                "resourceVersion": meta["resourceVersion"],
            },
            "spec": vft["spec"],
            "status": status,
        }
        result: dict[str, Any] = self._vft_call(
            "update videofinetunes/status",
            self.custom.replace_namespaced_custom_object_status,
            meta["namespace"],
            api.PLURAL,
            meta["name"],
            body,
        )
        return result

    def set_finalizers(self, vft: dict[str, Any], finalizers: list[str]) -> dict[str, Any]:
        meta = vft["metadata"]
        patch = {"metadata": {"finalizers": finalizers, "resourceVersion": meta["resourceVersion"]}}
        result: dict[str, Any] = self._vft_call(
            "patch videofinetunes",
            self.custom.patch_namespaced_custom_object,
            meta["namespace"],
            api.PLURAL,
            meta["name"],
            patch,
            _content_type="application/merge-patch+json",
        )
        return result

    def delete_vft(self, vft: dict[str, Any]) -> None:
        meta = vft["metadata"]
        try:
            self._vft_call(
                "delete videofinetunes",
                self.custom.delete_namespaced_custom_object,
                meta["namespace"],
                api.PLURAL,
                meta["name"],
                body=client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=meta["uid"])),
            )
        except ApiException as err:
            if err.status != 404:
                raise

    # --------------------------------------------------------------------- Events (best-effort)
    def event(self, vft: dict[str, Any], ev: Event) -> None:
        if self._events_broken:
            return
        meta = vft["metadata"]
        now = rfc3339(datetime.now(UTC))
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": api.API_VERSION,
                "kind": api.KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": ev.type,
            "reason": ev.reason,
            "message": ev.message[:1024],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "source": {"component": "disney-train-operator"},
            "reportingComponent": "disneytrain.dev/operator",
            "reportingInstance": self._instance,
        }
        try:
            self._count("create events")
            self.core.create_namespaced_event(meta["namespace"], body, _request_timeout=5)
        except Exception as err:  # best-effort by design
            status = getattr(err, "status", None)
            answer = str(getattr(err, "body", "") or "")
            if status == 405 or (status == 404 and "namespaces" not in answer):  # this API server keeps no events
                self._events_broken = True
                log.warning(
                    "events are not written (%s: %s); reconciling goes on without them",
                    status,
                    getattr(err, "reason", err),
                )
            else:
                log.debug("event %s on %s not written: %s", ev.reason, meta["name"], err)
