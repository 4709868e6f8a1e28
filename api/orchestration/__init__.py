"""Orchestration: what happens to jobs (create, enqueue, cancel, retry), and later dependencies, workflows, keys, throttles, webhooks."""
