"""archiver-gcs: the ``gcs`` sink for archiver, a separately installed plugin.

Registered through the entry point ``gcs = "archiver_gcs.plugin"`` in group ``archiver``.
google-cloud-storage is imported only when a sink first talks to GCS.
"""

__version__ = "0.1.0"
