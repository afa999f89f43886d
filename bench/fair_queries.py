"""Fair queries: a light request's latency while heavy listings run.

A plain first page (50 rows, index range) takes a few milliseconds; a listing
with 31 ``filter_not_`` JSON-path filters, one of which rejects every row,
makes SQLite evaluate the filters on every row of the month: hundreds of ms.
This script serves the real app (``create_app`` + ``make_server`` in a
monkey-patched child process, as ``eslcdr run`` does) over a database of N
rows (bench/api.py's generator, default 100,000) and measures the first
page's latency, alone and under C concurrent heavy clients (default 12), once
with ``[api] heavy_queries`` unbounded (what the API did before the heavy
lane) and once with the shipped default.

Prints figures; not a pass/fail test.

    python bench/fair_queries.py [--rows 100000] [--heavy 12] [--requests 100] [--db PATH]
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

if __name__ == "__main__" and "--serve" in sys.argv:
    # The server child patches before anything imports bottle (as `eslcdr run`
    # does): unpatched, Bottle's thread-local response is shared by every
    # greenlet and concurrent requests swap their headers.
    from gevent import monkey

    monkey.patch_all()

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from eslcdr import config  # noqa: E402
from eslcdr.api import app as api
from eslcdr.config import DEFAULTS  # noqa: E402


def _bench_api():
    spec = importlib.util.spec_from_file_location("bench_api", HERE / "api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def serve(db: Path, tokens_file: Path, heavy_queries: str) -> None:
    """Child process: the API as the daemon runs it (patched at import, above)."""
    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    cfg = config.from_mapping({"store": {"path": str(db)},
                               "api": {"tokens_file": str(tokens_file), "statement_timeout": "120",
                                       "heavy_queries": heavy_queries}})
    server = api.make_server(api.create_app(cfg), "127.0.0.1", 0, log=None)
    server.start()
    print(server.server_port, flush=True)
    server.serve_forever()


def get(conn: http.client.HTTPConnection, url: str, token: str) -> float:
    started = time.perf_counter()
    conn.request("GET", url, headers={"X-Auth-Token": token})
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError("%s -> %d %s" % (url[:80], response.status, body[:200]))
    return time.perf_counter() - started


def percentiles(times: list[float]) -> tuple[float, float]:
    times = sorted(times)
    return times[len(times) // 2] * 1000, times[min(len(times) - 1, int(len(times) * 0.99))] * 1000


def measure(db: Path, tokens_file: Path, heavy_queries: str, light_url: str, heavy_url: str, token: str,
            clients: int, requests: int) -> dict:
    child = subprocess.Popen([sys.executable, __file__, "--serve", str(db), str(tokens_file), heavy_queries],
                             stdout=subprocess.PIPE, text=True)
    try:
        port = int(child.stdout.readline())
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        get(conn, light_url, token)
        alone = percentiles([get(conn, light_url, token) for _ in range(requests)])
        heavy_alone = get(http.client.HTTPConnection("127.0.0.1", port, timeout=600), heavy_url, token)
        stop = threading.Event()
        heavy_times: list[float] = []

        def heavy_client() -> None:
            own = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
            while not stop.is_set():
                heavy_times.append(get(own, heavy_url, token))

        threads = [threading.Thread(target=heavy_client, daemon=True) for _ in range(clients)]
        for thread in threads:
            thread.start()
        time.sleep(2.0)  # every heavy client has a request in flight
        started = time.perf_counter()
        done_before = len(heavy_times)
        loaded = [get(conn, light_url, token) for _ in range(requests)]
        elapsed = time.perf_counter() - started
        heavy_done = len(heavy_times) - done_before
        stop.set()
        for thread in threads:
            thread.join(timeout=600)
        return {"alone": alone, "loaded": percentiles(loaded), "heavy_alone_ms": heavy_alone * 1000,
                "heavy_per_s": heavy_done / elapsed, "heavy_p50_ms": percentiles(heavy_times)[0]}
    finally:
        child.kill()
        child.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--db", type=Path, default=Path(tempfile.gettempdir()) / "eslcdr-bench-fair.db")
    parser.add_argument("--heavy", type=int, default=12, help="concurrent heavy clients")
    parser.add_argument("--requests", type=int, default=100, help="light requests per figure")
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve[0]), Path(args.serve[1]), args.serve[2])
        return
    bench_api = _bench_api()
    if bench_api.row_count(args.db) != args.rows:
        for suffix in ("", "-wal", "-shm"):
            try:
                os.remove(str(args.db) + suffix)
            except FileNotFoundError:
                pass
        bench_api.generate(args.db, args.rows)
    account = bench_api.ACCOUNTS[0]
    workdir = Path(tempfile.mkdtemp(prefix="eslcdr-bench-fair-"))
    tokens_file = workdir / "tokens"
    tokens_file.write_text("bench-token %s\n" % account)
    base = "/v2/accounts/%s" % account
    light = base + "/cdrs"
    filters = ["filter_not_custom_channel_vars.x%02d=y" % i for i in range(30)]
    filters.append("filter_not_custom_channel_vars.rate_name=US-48")  # every row has it: nothing matches
    heavy = base + "/cdrs/interaction?" + "&".join(filters)
    print("%d rows; %d heavy clients (31 filter_not_ JSON-path filters on the interaction list); "
          "%d light requests (first page, 50 rows) per figure" % (args.rows, args.heavy, args.requests))
    for label, slots in (("heavy lane unbounded (before)", "100000"),
                         ("heavy_queries = %s (default)" % DEFAULTS["api"]["heavy_queries"],
                          DEFAULTS["api"]["heavy_queries"])):
        result = measure(args.db, tokens_file, slots, light, heavy, "bench-token", args.heavy, args.requests)
        print("%-32s first page alone p50 %6.1f ms p99 %6.1f ms | under load p50 %7.1f ms p99 %7.1f ms"
              " | heavy alone %5.0f ms, under load p50 %6.0f ms, %.1f/s"
              % (label, *result["alone"], *result["loaded"], result["heavy_alone_ms"],
                 result["heavy_p50_ms"], result["heavy_per_s"]))


if __name__ == "__main__":
    main()
