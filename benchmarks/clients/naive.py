"""The script the API docs' polling example leads a user to write: list the projects and
their jobs, then for each finished job fetch the result and each artifact it references,
one request after another, each with ``requests.get`` (no session, no concurrency).

``python -m benchmarks.clients.naive BASE_URL OUT_DIR [--skip-existing]``; the key comes
from ``$PLANGREP_API_KEY``. ``--skip-existing`` is its second run: it still reads every
result (it needs it to know the artifacts) but does not download an artifact whose file
exists. Prints the number of artifacts downloaded and skipped.
"""

import os
import sys
from urllib.parse import parse_qs, urljoin, urlsplit

import requests

DONE = ("completed", "completed_with_errors")


def artifact_urls(node):
    """Every ``url`` in the result that points at an artifact route."""
    if isinstance(node, dict):
        url = node.get("url")
        if isinstance(url, str) and "/artifact?" in url:
            yield url
        for value in node.values():
            yield from artifact_urls(value)
    elif isinstance(node, list):
        for value in node:
            yield from artifact_urls(value)


def main(argv):
    base, out = argv[0].rstrip("/"), argv[1]
    skip_existing = "--skip-existing" in argv
    headers = {"Authorization": f"Bearer {os.environ['PLANGREP_API_KEY']}"}

    def get(url):
        r = requests.get(url, headers=headers, timeout=60)
        r.raise_for_status()
        return r

    downloaded = skipped = 0
    for project in get(f"{base}/projects").json()["projects"]:
        for job in get(f"{base}/projects/{project['id']}/jobs").json()["jobs"]:
            if job["status"] not in DONE:
                continue
            job_dir = os.path.join(out, project["id"], job["id"])
            os.makedirs(os.path.join(job_dir, "artifacts"), exist_ok=True)
            result = get(f"{base}/jobs/{job['id']}/result")
            with open(os.path.join(job_dir, "result.json"), "wb") as f:
                f.write(result.content)
            by_path = {}  # the same artifact may be referenced more than once
            for url in artifact_urls(result.json()):
                full = urljoin(base + "/", url)
                by_path.setdefault(parse_qs(urlsplit(full).query)["path"][0], full)
            for path, full in by_path.items():
                target = os.path.join(job_dir, "artifacts", path.replace("/", "__"))
                if skip_existing and os.path.exists(target):
                    skipped += 1
                    continue
                data = get(full).content
                with open(target, "wb") as f:
                    f.write(data)
                downloaded += 1
    print(downloaded, skipped)


if __name__ == "__main__":
    main(sys.argv[1:])
