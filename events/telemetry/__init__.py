"""What the processes tell operators: Prometheus metrics, OpenTelemetry tracing, JSON logs."""
