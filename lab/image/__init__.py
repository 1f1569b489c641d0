"""Building what guests boot: the kernel, the root and module disks, the initramfs, the module.
"""
