"""The disney-train operator: VideoFineTune custom resources run as KubeRay RayJobs.

Its own package name (never `operator`, which would shadow Python's standard library module).
Light: pydantic, PyYAML, kopf and the Kubernetes client; no torch.
"""
