"""The master node: feed poller, scheduler, HTTP API, index and dashboard."""
