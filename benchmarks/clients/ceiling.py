"""A bare keep-alive client: N threads, one ``requests.Session`` each, fetching the given
URLs and discarding the bodies. What a Python client can pull from the emulator at all.

``python -m benchmarks.clients.ceiling URL_FILE CONCURRENCY``; key from
``$PLANGREP_API_KEY``. Prints the number of bodies and bytes read.
"""

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import requests


def main(argv):
    with open(argv[0]) as f:
        urls = [line.strip() for line in f if line.strip()]
    concurrency = int(argv[1])
    headers = {"Authorization": f"Bearer {os.environ['PLANGREP_API_KEY']}"}
    local = threading.local()

    def fetch(url):
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        r = session.get(url, headers=headers, timeout=60)
        r.raise_for_status()
        return len(r.content)

    with ThreadPoolExecutor(concurrency) as pool:
        sizes = list(pool.map(fetch, urls))
    print(len(sizes), sum(sizes))


if __name__ == "__main__":
    main(sys.argv[1:])
