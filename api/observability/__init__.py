"""Observability without Flask: JSON logs, trace headers, attempt logs, OpenTelemetry."""
