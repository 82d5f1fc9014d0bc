"""A bare keep-alive client: N threads, one ``requests.Session`` each, fetching the given
URLs and discarding the bodies. What a Python client can pull from the emulator at all.

``python -m benchmarks.clients.ceiling URL_FILE CONCURRENCY``; key from
``$PLANGREP_API_KEY``. Prints the number of bodies and bytes read.
"""

import os
import sys
from concurrent.futures import ThreadPoolExecutor

from benchmarks.clients import thread_session


def main(argv):
    with open(argv[0]) as f:
        urls = [line.strip() for line in f if line.strip()]
    concurrency = int(argv[1])
    headers = {"Authorization": f"Bearer {os.environ['PLANGREP_API_KEY']}"}
    session_of_thread = thread_session()

    def fetch(url):
        session = session_of_thread()
        r = session.get(url, headers=headers, timeout=60)
        r.raise_for_status()
        return len(r.content)

    with ThreadPoolExecutor(concurrency) as pool:
        sizes = list(pool.map(fetch, urls))
    print(len(sizes), sum(sizes))


if __name__ == "__main__":
    main(sys.argv[1:])
