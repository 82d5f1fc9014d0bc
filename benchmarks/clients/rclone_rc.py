"""rclone's ``copyurl`` fed a list of URLs, the fast way: one ``rclone rcd`` process
(started with ``--header "Authorization: Bearer …"``) and N concurrent
``operations/copyurl`` calls to it, so rclone pays its start-up once, not per URL.

``python -m benchmarks.clients.rclone_rc URL_FILE OUT_DIR CONCURRENCY``; key from
``$PLANGREP_API_KEY``. rcd listens on 127.0.0.1 and is stopped (and waited for, so its
memory and CPU count in this process's rusage) before exiting. Prints the file count.
"""

import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from benchmarks.clients import thread_session


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv):
    with open(argv[0]) as f:
        urls = [line.strip() for line in f if line.strip()]
    out, concurrency = argv[1], int(argv[2])
    os.makedirs(out, exist_ok=True)
    port = free_port()
    rc = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        ["rclone", "rcd", "--rc-addr", f"127.0.0.1:{port}", "--rc-no-auth", "-q",
         "--header", f"Authorization: Bearer {os.environ['PLANGREP_API_KEY']}"],
        stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                requests.post(f"{rc}/rc/noop", json={}, timeout=1).raise_for_status()
                break
            except requests.RequestException:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("rclone rcd did not start")
                time.sleep(0.02)
        session_of_thread = thread_session()

        def copy(item):
            i, url = item
            session = session_of_thread()
            r = session.post(f"{rc}/operations/copyurl", timeout=120,
                             json={"fs": out, "remote": f"{i}.bin", "url": url})
            if r.status_code != 200:
                raise SystemExit(f"copyurl {url}: {r.status_code} {r.text[:300]}")

        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(copy, enumerate(urls)))
    finally:
        proc.terminate()
        proc.wait(10)
    print(len(os.listdir(out)))


if __name__ == "__main__":
    main(sys.argv[1:])
