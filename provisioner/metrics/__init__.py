"""Prometheus metrics: every metric defined once (registry.py), the hooks the planes call when
something happens (hooks.py, stages.py), and the collectors that read existing state at scrape
time (collectors.py). Low in the layers: it imports prometheus_client and the pure cores only,
so the store, the inventory, the lifecycle and every server can report to it."""
