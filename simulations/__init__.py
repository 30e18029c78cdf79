"""Scenarios, the runner that plays them, reports, benchmarks and the `kdledger` CLI."""
