"""Job handlers: the /handlers blueprint, the job registry and the built-in job types."""

from handlers.registry import JobContext, Permanent, Retry, job, registry

__all__ = ["JobContext", "Permanent", "Retry", "job", "registry"]
