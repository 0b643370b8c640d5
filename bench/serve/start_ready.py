"""Container start -> ready, for bench/serve.sh: creates a container of the serving image (the
flags ferry uses: init, read-only root, no capabilities, no-new-privileges, port on 127.0.0.1),
then times from `docker start` to the first 200 on /v2/health/ready, polling every millisecond
once `docker start` has returned.
Prints one line per run (ms) on stderr and, on stdout:
    RESULT median_ms=… min_ms=… max_ms=… runs=… engine_ms=… server_ms=… floor_ms=…
engine_ms is the median time `docker start` took to return (the container engine's part);
server_ms the median of what the server itself logs ("ready in N ms": bind + model load);
floor_ms the median time `docker start` takes for the same image and flags running
`ferry --version` instead of the server: the engine's own floor on this machine.

    python3 start_ready.py IMAGE RUNS LABEL
LABEL (key=value) marks the containers so the caller can remove them if this is interrupted.
"""

import http.client
import re
import socket
import statistics
import subprocess
import sys
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ready(port):
    # A short timeout, so that a connection docker-proxy accepted but cannot pass on yet does not
    # hide the moment the server is ready.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=0.02)
    try:
        conn.request("GET", "/v2/health/ready")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def docker(*args):
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout.strip()


def one(image, label):
    port = free_port()
    cid = docker("create", "--label", label, "--init", "--read-only", "--cap-drop", "ALL",
                 "--security-opt", "no-new-privileges", "-p", f"127.0.0.1:{port}:8080", image)
    try:
        t0 = time.perf_counter()
        docker("start", cid)
        engine = (time.perf_counter() - t0) * 1000
        # Polling starts once `docker start` has returned, as `ferry serve` and a user's
        # `docker start … && curl …` do. Earlier, the first connection through docker-proxy
        # can reach the container's address before its network is up, and every connection
        # then waits about a second (seen here: ready at 1.06 s instead of 0.37 s).
        while not ready(port):
            if time.perf_counter() - t0 > 30:
                raise SystemExit(f"not ready after 30 s; logs:\n{docker('logs', cid)}")
            time.sleep(0.001)
        elapsed = (time.perf_counter() - t0) * 1000
        logs = subprocess.run(["docker", "logs", cid], capture_output=True, text=True)
        m = re.search(r"ready in (\d+) ms", logs.stdout + logs.stderr)
        return elapsed, engine, int(m.group(1)) if m else None
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True)


def floor(image, label):
    """`docker start` of the same image and flags whose process (`ferry --version`) needs
    nothing: what the container engine alone takes on this machine."""
    cid = docker("create", "--label", label, "--init", "--read-only", "--cap-drop", "ALL",
                 "--security-opt", "no-new-privileges", "-p", f"127.0.0.1:{free_port()}:8080",
                 "--entrypoint", "/usr/bin/ferry", image, "--version")
    try:
        t0 = time.perf_counter()
        docker("start", cid)
        return (time.perf_counter() - t0) * 1000
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True)


def main():
    image, runs, label = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    one(image, label)  # page cache and docker state warm, like a restart
    times, engines, server = [], [], []
    for i in range(runs):
        ms, engine, srv = one(image, label)
        times.append(ms)
        engines.append(engine)
        if srv is not None:
            server.append(srv)
        print(f"    run {i + 1}: {ms:.0f} ms (docker start returned after {engine:.0f} ms; "
              f"server: ready in {srv} ms)", file=sys.stderr)
    floors = [floor(image, label) for _ in range(runs)]
    print(f"RESULT median_ms={statistics.median(times):.0f} min_ms={min(times):.0f} "
          f"max_ms={max(times):.0f} runs={runs} engine_ms={statistics.median(engines):.0f} "
          f"server_ms={statistics.median(server) if server else -1:.0f} "
          f"floor_ms={statistics.median(floors):.0f}")


if __name__ == "__main__":
    main()
