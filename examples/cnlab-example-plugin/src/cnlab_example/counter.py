#!/usr/bin/env python3
"""Guest side of beat-counter: join a connector group, count messages per CPU, print JSON.

Standard library only (runs with the guest's python3).
"""

import argparse
import json
import select
import socket
import struct
import sys
import time

NETLINK_CONNECTOR = 11
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
HDR = struct.Struct("=IHHII")      # nlmsghdr
CN = struct.Struct("=IIIIHH")      # cn_msg
EVENT = struct.Struct("=IIQQII")   # cnlab_event: gen_id, cpu, seq, ts_ns, len, flags


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--group", type=int, default=26)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
    sock.bind((0, 0))
    sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, args.group)
    per_cpu: dict[int, int] = {}
    end = time.monotonic() + args.seconds
    while (left := end - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            break
        try:
            buf = sock.recv(65536)
        except OSError:
            continue
        off = 0
        while off + HDR.size + CN.size <= len(buf):
            length = HDR.unpack_from(buf, off)[0]
            if length < HDR.size + CN.size:
                break
            if CN.unpack_from(buf, off + HDR.size)[4] >= EVENT.size:
                cpu = EVENT.unpack_from(buf, off + HDR.size + CN.size)[1]
                per_cpu[cpu] = per_cpu.get(cpu, 0) + 1
            off += (length + 3) & ~3
    print(json.dumps({"beats": sum(per_cpu.values()), "per_cpu": {str(k): v for k, v in sorted(per_cpu.items())}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
