"""Observability: the workers' Prometheus metrics, the alert rules and the Grafana dashboards."""
