"""`make test` runs the suite where only loopback exists (tools/netns-run)."""

from __future__ import annotations

import os
import socket


def test_suite_runs_in_a_loopback_only_network_namespace() -> None:
    mode = os.environ.get("DISNEY_TRAIN_NETNS")
    assert mode is not None, "run the suite through `make test` (tools/netns-run), which isolates the network"
    if mode == "none":
        print("network namespace not available here: running without isolation (netns-run said so)")
        return
    assert mode == "loopback-only"
    # asked of the kernel for this process's namespace (/sys/class/net would show the host's)
    interfaces = sorted(name for _, name in socket.if_nameindex())
    assert interfaces == ["lo"], interfaces
