"""Finding artifact references in a Plangrep result (docs/plangrep-api.md, decision 1).

The docs show artifact objects in several places (``documents[].artifacts[]``,
``documents[].sheets[].artifacts[]``, project entities, ``result.artifacts``) and in two
shapes (``{"type", "url"}`` and ``{"path", "url"}``), so the whole tree is walked rather
than a list of known locations. An object is an artifact when

* it has a string ``url`` whose path ends in ``/jobs/{jobId}/artifact`` or
  ``/projects/{projectId}/artifact`` and whose query carries a ``path`` value, or
* it has both a string ``path`` and a string ``url`` (served by the job's artifact route).

``path`` is taken from the URL's query, percent-decoded exactly once by
:func:`urllib.parse.parse_qs` (so ``+`` is a space, as in any form-encoded query); the
object's own ``path`` is the fallback. Artifacts are deduplicated by path, first
occurrence in document order wins, and the raw object is kept.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ..errors import SourceError
from ..model import Artifact, Job

# Any prefix: absolute URLs, "/api/open/v1/..." and "jobs/..." relative forms all match.
_ROUTE = re.compile(r"(?:^|/)(jobs|projects)/([^/]+)/artifact/?$")


def _walk(tree: Any) -> Iterator[dict]:
    """Every dict in ``tree``, depth-first in document order, without recursion."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            yield node
            stack.extend(reversed(list(node.values())))
        elif isinstance(node, list):
            stack.extend(reversed(node))


def _query_path(job: Job, url: str) -> str | None:
    try:
        query = urlsplit(url).query
        values = parse_qs(query, keep_blank_values=True, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise SourceError(f"job {job.id}: artifact URL {url!r} has a path that is not valid "
                          "UTF-8 once percent-decoded; it cannot be requested") from None
    except ValueError:
        return None
    found = values.get("path")
    return found[0] if found else None


def artifact_from_object(job: Job, obj: dict) -> Artifact | None:
    """The artifact ``obj`` describes, or None if it is not an artifact reference."""
    url = obj.get("url")
    if not isinstance(url, str):
        return None
    try:
        route = _ROUTE.search(urlsplit(url).path)
    except ValueError:  # e.g. an invalid IPv6 netloc
        route = None
    path = _query_path(job, url) if route else None
    if not path:  # no artifact URL with a path: the object must carry its own
        own = obj.get("path")
        if not isinstance(own, str) or not own:
            return None
        path = own
    scope, scope_id = (route.group(1), unquote(route.group(2))) if route else ("jobs", job.id)
    return Artifact(job_id=job.id, path=path, url=url, scope=scope, scope_id=scope_id, raw=obj)


def find_artifacts(job: Job, result: bytes | str | Any) -> list[Artifact]:
    """Every artifact referenced anywhere in ``result`` (raw JSON or parsed), by path."""
    if isinstance(result, (bytes, bytearray, str)):
        try:
            tree = json.loads(result)
        except (ValueError, RecursionError) as exc:
            raise SourceError(f"job {job.id}: result is not valid JSON ({exc})") from None
    else:
        tree = result
    seen: dict[str, Artifact] = {}
    for obj in _walk(tree):
        artifact = artifact_from_object(job, obj)
        if artifact is not None and artifact.path not in seen:
            seen[artifact.path] = artifact
    return list(seen.values())
