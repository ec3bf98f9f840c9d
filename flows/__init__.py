"""Prefect flows and entry points of alexnet-dag: wiring only, the steps live in `tasks`."""
