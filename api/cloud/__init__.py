"""Google Cloud: the Cloud Tasks client, queue specs (queues.yaml) and queue sync."""
