"""Quality on real data, against the dense reference: evaluation tasks and metrics."""

__all__: list[str] = []
