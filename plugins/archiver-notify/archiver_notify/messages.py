"""What is sent: one event document, rendered in the shape of each endpoint's format, and
the Standard Webhooks signature of a generic webhook.

The event document (``format: webhook``) follows Standard Webhooks' payload convention:
``{"type": "job.archived", "timestamp": ISO-8601, "data": {...}}``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import socket
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from archiver.model import ArtifactResult, Job

TITLES = {"archived": "archived", "incomplete": "INCOMPLETE", "lost": "LOST",
          "nothing_to_store": "had nothing to store", "expiring": "EXPIRES SOON"}
# Slack attachment / Teams card colours: good, warning, attention.
COLOURS = {"archived": "2EB886", "incomplete": "DAA038", "lost": "A30200",
           "nothing_to_store": "808080", "expiring": "DAA038"}
_MAX_PROBLEMS = 20  # a job with thousands of failed artifacts must not make a 10 MB message


def job_event(job: Job, state: str, results: list[ArtifactResult]) -> dict[str, Any]:
    """The event document of an ``archiver_job_done`` call."""
    problems = [f"{r.path}: {'; '.join(r.errors.values())}" for r in results if r.errors]
    data = {**_job(job), "state": state, "objects": len(results),
            "stored": sum(1 for r in results if r.ok and not r.skipped),
            "already_stored": sum(1 for r in results if r.skipped),
            "failed": len(problems),
            "bytes": sum(r.size for r in results if not r.skipped),
            "problems": problems[:_MAX_PROBLEMS]}
    return _envelope(state, data)


def expiring_event(job: Job, state: str, expires_in: float, message: str) -> dict[str, Any]:
    return _envelope("expiring", {**_job(job), "state": state,
                                  "expires_in": round(expires_in), "message": message})


def _job(job: Job) -> dict[str, Any]:
    return {"job_id": job.id, "project_id": job.project_id, "status": job.status,
            "expires_at": job.expires_at}


def _envelope(event: str, data: dict[str, Any]) -> dict[str, Any]:
    # host/pid: with several worker processes, which one did the job.
    data["host"], data["pid"] = socket.gethostname(), os.getpid()
    return {"type": f"job.{event}", "timestamp": datetime.now(timezone.utc).isoformat(),
            "data": data}


def summary(event: dict[str, Any]) -> str:
    d, kind = event["data"], event["type"].removeprefix("job.")
    text = f"Plangrep job {d['job_id']} (project {d['project_id']}) {TITLES.get(kind, kind)}"
    if kind == "expiring":
        return f"{text}: {d['message']}"
    if kind in ("archived", "incomplete"):
        text += f": {d['stored']} stored, {d['already_stored']} already stored"
        text += f", {d['failed']} failed" if d["failed"] else ""
    return text


def facts(event: dict[str, Any]) -> list[tuple[str, str]]:
    d = event["data"]
    out = [("Job", d["job_id"]), ("Project", d["project_id"]), ("State", d["state"])]
    if d.get("expires_at"):
        out.append(("Expires", d["expires_at"]))
    out += [("Problem", p) for p in d.get("problems", [])[:5]]
    return out


def render(fmt: str, event: dict[str, Any]) -> bytes:
    """The request body for an endpoint of format ``fmt``."""
    if fmt == "slack":
        text = summary(event)
        body: dict[str, Any] = {"text": text, "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "section", "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{v}"}
                                           for k, v in facts(event)[:10]]}]}
    elif fmt == "teams":
        body = {"type": "message", "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard", "version": "1.4",
                "body": [{"type": "TextBlock", "text": summary(event), "wrap": True,
                          "weight": "Bolder",
                          "color": "Good" if event["type"] == "job.archived" else "Attention"},
                         {"type": "FactSet", "facts": [{"title": k, "value": v}
                                                       for k, v in facts(event)]}]}}]}
    else:
        body = event
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def new_message_id() -> str:
    """``webhook-id``: the same for every retry of one message, so receivers dedupe."""
    return f"msg_{uuid.uuid4().hex}"


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` (Standard Webhooks)."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


def headers(fmt: str, key: bytes | None, msg_id: str, body: bytes) -> dict[str, str]:
    """Headers of one attempt. A webhook gets ``webhook-id``/``-timestamp`` (and, with a
    secret, ``-signature``), signed afresh so that a late retry is still inside the
    receiver's tolerance window; Slack and Teams get plain JSON."""
    out = {"Content-Type": "application/json", "User-Agent": "archiver-notify/0.1"}
    if fmt == "webhook":
        ts = int(time.time())
        out.update({"webhook-id": msg_id, "webhook-timestamp": str(ts)})
        if key is not None:
            out["webhook-signature"] = sign(key, msg_id, ts, body)
    return out
