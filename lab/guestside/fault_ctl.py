"""Sets one of the module's fault knobs: ``fault_ctl.py KIND VALUE``.

KIND is stall (ms), alloc_fail (fail every Nth allocation, 0 = off),
queue_limit (per-CPU queue limit) or warn (WARN on purpose; needs the
debug_warn module parameter).  Exit status 0 when the module accepted it.
"""

import sys

import kabi

KNOBS = {
    "stall": kabi.CNLAB_FAULT_STALL_MS,
    "alloc_fail": kabi.CNLAB_FAULT_ALLOC_NTH,
    "queue_limit": kabi.CNLAB_FAULT_QLIMIT,
    "warn": kabi.CNLAB_FAULT_WARN,
}


def main(argv):
    if len(argv) != 2 or argv[0] not in KNOBS:
        print(f"usage: fault_ctl.py {{{','.join(KNOBS)}}} VALUE", file=sys.stderr)
        return 2
    value = kabi.CNLAB_WARN_MAGIC if argv[0] == "warn" else int(argv[1])
    with kabi.CtlClient(timeout=5.0) as client:
        reply = client.fault(KNOBS[argv[0]], value)
    if not reply.ok:
        print(f"fault_ctl: {argv[0]} refused: {reply.error_name}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
