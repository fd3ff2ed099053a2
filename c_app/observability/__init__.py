"""Observability: Prometheus metrics, JSON log lines and OpenTelemetry traces (README, "Observability")."""
