"""Last (by name): `helm uninstall` and the VideoFineTunes' deletion leave S3 untouched and no pods."""

from __future__ import annotations

import pytest

from tests.e2e.jobs import JOBS_NS, RELEASE_NS, keys
from tests.support.cluster import Kube, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]


def test_uninstall_leaves_s3_data_and_no_pods(kube: Kube, s3: dict[str, str], installed: None) -> None:
    before = set(keys(s3, ""))
    kube.kubectl("-n", JOBS_NS, "delete", "vft", "--all", "--wait", "--timeout=120s")
    kube.helm("uninstall", "disney-train", "-n", RELEASE_NS, "--wait")

    def no_pods() -> bool | None:
        pods = kube.items("pods", JOBS_NS) + kube.items("pods", RELEASE_NS)
        return True if not pods else None

    wait_until("no pods left in the release's and the jobs' namespaces", no_pods, timeout=120)
    assert set(keys(s3, "")) >= before
    # the runs' ConfigMaps and NetworkPolicies went with their VideoFineTunes (owner references)
    selector = "disneytrain.dev/videofinetune"

    def none_left() -> bool | None:
        return (
            True
            if not kube.items("configmaps", JOBS_NS, selector) + kube.items("networkpolicies", JOBS_NS, selector)
            else None
        )

    wait_until("no run ConfigMaps or NetworkPolicies left", none_left, timeout=120)
