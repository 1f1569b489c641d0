"""Connector round trip: ECHO requests to the cnlab module, answered in kind.

Prints a JSON object: how many echoes came back intact and their round-trip
times.  Exit status 1 when any echo is lost or altered.
"""

import json
import os
import sys
import time

import kabi


def main(count: int) -> int:
    rtts = []
    bad = 0
    with kabi.CtlClient(timeout=5.0) as client:
        for i in range(count):
            payload = os.urandom(8 + i % 64)
            started = time.monotonic_ns()
            reply = client.echo(payload)
            rtts.append((time.monotonic_ns() - started) / 1000.0)
            if not reply.ok or reply.body.get("data") != payload:
                bad += 1
    rtts.sort()
    print(json.dumps({
        "echoes": count,
        "intact": count - bad,
        "rtt_us_median": rtts[len(rtts) // 2] if rtts else None,
        "rtt_us_max": rtts[-1] if rtts else None,
    }))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100))
