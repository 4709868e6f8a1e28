"""What job authors import: `@job`, the context a job function receives, and how an attempt ends."""

from handlers.registry import JobContext, Parent, Permanent, Retry, job, registry

__all__ = ["JobContext", "Parent", "Permanent", "Retry", "job", "registry"]
