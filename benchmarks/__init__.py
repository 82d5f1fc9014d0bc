"""Reproducible performance scenarios for archiver, each measured side by side with the
tools a user would use instead (curl + sha256sum, a requests loop, rclone, boto3,
google-cloud-storage). Run ``python -m benchmarks --help``; docs/benchmarks.md holds the
latest full run. Importing this package has no side effects and imports nothing heavy.
"""
