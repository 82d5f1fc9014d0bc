"""The least a durable Python client has to do per artifact, and nothing more: N threads,
one ``requests.Session`` each, GET the URL, SHA-256 the body, write it to a temporary
file, fsync it, hard-link it into place, fsync the directory. No listing, no results, no
ledger, no retries: about the most a thread-based Python archiver can do on this machine.

``python -m benchmarks.clients.durable URL_FILE OUT_DIR CONCURRENCY``; key from
``$PLANGREP_API_KEY``. Prints the number of files stored.
"""

import hashlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor

from benchmarks.clients import thread_session

PER_DIR = 20  # files per directory, like one job's artifacts


def main(argv):
    with open(argv[0]) as f:
        urls = [line.strip() for line in f if line.strip()]
    out, concurrency = argv[1], int(argv[2])
    headers = {"Authorization": f"Bearer {os.environ['PLANGREP_API_KEY']}"}
    session_of_thread = thread_session()

    def store(item):
        i, url = item
        session = session_of_thread()
        r = session.get(url, headers=headers, timeout=60)
        r.raise_for_status()
        body = r.content
        digest = hashlib.sha256(body).hexdigest()
        directory = os.path.join(out, str(i // PER_DIR))
        os.makedirs(directory, exist_ok=True)
        final = os.path.join(directory, f"{i}.bin")
        temp = os.path.join(directory, f".{i}.{digest[:16]}.partial")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(temp, final)
        os.unlink(temp)
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    with ThreadPoolExecutor(concurrency) as pool:
        stored = sum(1 for _ in pool.map(store, enumerate(urls)))
    print(stored)


if __name__ == "__main__":
    main(sys.argv[1:])
