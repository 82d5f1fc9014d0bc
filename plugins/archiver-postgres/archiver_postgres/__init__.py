"""archiver-postgres."""
