#!/usr/bin/env python3
"""Guest smoke test: send ECHO through the connector and get it back.

Usage (in a guest with cnlab.ko loaded): python3 guest_echo.py [N]
Prints one JSON line with round-trip latency percentiles; exit 1 on failure.
"""
import json
import sys
import time

import _path  # noqa: F401
import kabi


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    rtts = []
    with kabi.CtlClient(timeout=2.0) as c:
        for i in range(n):
            data = bytes([i & 0xFF]) * (i % 64)
            t0 = time.monotonic_ns()
            rep = c.echo(data)
            t1 = time.monotonic_ns()
            if not rep.ok:
                print(json.dumps({"ok": False, "error": rep.error_name}))
                return 1
            b = rep.body
            if b["data"] != data or not (t0 <= b["rx_ns"] <= b["tx_ns"] <= t1):
                print(json.dumps({"ok": False, "error": "bad echo", "body": str(b)}))
                return 1
            rtts.append(t1 - t0)
    rtts.sort()
    print(json.dumps({"ok": True, "n": n,
                      "rtt_ns_p50": rtts[len(rtts) // 2],
                      "rtt_ns_p99": rtts[min(len(rtts) - 1, len(rtts) * 99 // 100)],
                      "rtt_ns_max": rtts[-1]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
