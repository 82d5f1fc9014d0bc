"""archiver-notify: POST a JSON message about archived, incomplete, lost and expiring jobs
to HTTP endpoints (Standard Webhooks, Slack, Teams), never slowing archiving down."""

from .config import Endpoint, NotifyConfig

__all__ = ["Endpoint", "NotifyConfig"]
