"""The fleet's live channels: latency of one fan-out over N stand-in nodes
(issue 17, point 6: 20 nodes, one down, p99 < 300 ms).

Stand-in nodes are small real HTTP servers (gevent.pywsgi) in ``--procs``
child processes, each answering the channels route with ``--channels``
Kazoo channel documents; ``--down`` more nodes are down (``refused``: a
port nobody listens on; ``stalled``: accepts, never answers, so each
fan-out takes the whole timeout by design).  The fan-out itself is
``eslcdr.collector.fleet.fleet_channels``, in this process, asked
``--requests`` times one after the other after 10 warm-up runs.

Prints figures; not a pass/fail test.

    python bench/fleet_channels.py [--nodes 20] [--down 1] [--down-mode refused] [--channels 50] [--requests 300]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GREGORIAN_UNIX_OFFSET = 62167219200


def channel(node: int, index: int) -> dict:
    """A channel as a node's route answers it (eslcdr/ingest/live.py's fields)."""
    created = int(time.time()) - index * 7
    return {
        "uuid": "%08x-%04x-4000-8000-%012x" % (node, index, index * 7919),
        "answered": index % 4 != 0,
        "timestamp": created + GREGORIAN_UNIX_OFFSET,
        "elapsed_s": index * 7,
        "state": "ACTIVE" if index % 4 else "RINGING",
        "node": "fs%d" % node,
        "account_id": "%032x" % (index % 50),
        "direction": "inbound" if index % 2 else "outbound",
        "destination": "+3120%07d" % index,
        "owner_id": "%032x" % (1000 + index % 200),
        "caller_id_name": "Caller %d" % index,
        "caller_id_number": "+3161%07d" % index,
        "callee_id_number": "+3120%07d" % index,
        "channel_name": "sofia/external/+3120%07d@10.0.0.%d" % (index, node),
        "interaction_id": "63900000000-%08x" % (node * 100000 + index),
    }


def serve(count: int, channels: int, first: int) -> None:
    """Child: ``count`` stand-in nodes; prints their ports, serves until stdin closes."""
    import gevent
    import gevent.pywsgi
    import orjson

    servers = []
    for n in range(first, first + count):
        body = orjson.dumps({"data": [channel(n, i) for i in range(channels)], "status": "success",
                             "page_size": channels, "version": "bench"})

        def app(environ, start_response, body=body):
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]

        server = gevent.pywsgi.WSGIServer(("127.0.0.1", 0), app, log=None, error_log=None)
        server.start()
        servers.append(server)
    print(json.dumps([s.server_port for s in servers]), flush=True)
    gevent.get_hub().threadpool.spawn(sys.stdin.read).get()  # until the parent closes our stdin


def stopped_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=20, help="stand-in nodes in all, the down ones included")
    parser.add_argument("--down", type=int, default=1)
    parser.add_argument("--down-mode", choices=("refused", "stalled"), default="refused")
    parser.add_argument("--channels", type=int, default=50, help="live channels on each node")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--timeout", type=float, default=2.0, help="[collector] channels_timeout")
    parser.add_argument("--procs", type=int, default=2, help="processes serving the stand-in nodes")
    parser.add_argument("--serve", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(*args.serve)
        return

    sys.path.insert(0, str(ROOT))
    import gevent.server
    import structlog

    # the fan-out's warning line (a node is down) on every run would be the output
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))

    from eslcdr.collector.config import FeedNode
    from eslcdr.collector.fleet import fleet_channels

    up = args.nodes - args.down
    children, ports = [], []
    for p in range(args.procs):
        share = up // args.procs + (1 if p < up % args.procs else 0)
        child = subprocess.Popen([sys.executable, __file__, "--serve", str(share), str(args.channels), str(len(ports))],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 env=dict(os.environ, PYTHONPATH=str(ROOT)))
        children.append(child)
        ports += json.loads(child.stdout.readline())
    stalled = []
    if args.down_mode == "stalled":
        for _ in range(args.down):
            server = gevent.server.StreamServer(("127.0.0.1", 0), lambda sock, _a: gevent.sleep(3600))
            server.start()
            stalled.append(server)
        down_ports = [s.server_port for s in stalled]
    else:
        down_ports = [stopped_port() for _ in range(args.down)]
    nodes = [FeedNode("fs%d" % i, "http://127.0.0.1:%d" % port, "bench-token-%d" % i) for i, port in enumerate(ports)]
    nodes += [FeedNode("down%d" % i, "http://127.0.0.1:%d" % port, "bench-token-down") for i, port in enumerate(down_ports)]
    try:
        cpu0 = time.process_time()
        timings = []
        for run in range(10 + args.requests):
            started = time.perf_counter()
            result = fleet_channels(nodes, "/v2/channels", args.timeout, max_bytes=16 << 20)
            elapsed = time.perf_counter() - started
            assert len(result.channels) == up * args.channels, (len(result.channels), result.unreachable)
            assert len(result.unreachable) == args.down, result.unreachable
            if run >= 10:
                timings.append(elapsed * 1000)
            else:
                cpu0 = time.process_time()
        cpu = (time.process_time() - cpu0) / args.requests * 1000
    finally:
        for child in children:
            child.stdin.close()
            child.wait(10)
        for server in stalled:
            server.stop(timeout=0)
    load = os.getloadavg()[0]
    print("fleet channels: %d nodes (%d up, %d down: %s), %d channels each (%d merged), %d fan-outs, timeout %g s"
          % (args.nodes, up, args.down, args.down_mode, args.channels, up * args.channels, args.requests, args.timeout))
    print("latency ms: p50 %.1f  p90 %.1f  p99 %.1f  max %.1f   fan-out CPU %.1f ms   load average %.2f"
          % (percentile(timings, 50), percentile(timings, 90), percentile(timings, 99), max(timings), cpu, load))
    print("reasons: %s" % sorted({u.reason for u in result.unreachable}))


if __name__ == "__main__":
    main()
