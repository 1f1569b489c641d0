"""cnlab: a QEMU integration lab for the Linux netlink connector and CBUS."""

__version__ = "0.1.0"
