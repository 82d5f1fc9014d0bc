"""Baseline clients, each run as its own process by the scenarios (``python -m
benchmarks.clients.NAME``) so that its time and memory are measured like archiver's."""
