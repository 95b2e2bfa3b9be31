"""Benchmarks that talk to a server over HTTP only: workloads, an open-loop sender, reports."""
