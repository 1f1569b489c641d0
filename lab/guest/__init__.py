"""One QEMU guest from boot to stop (argv, accelerator, SSH, console, files, jobs), and the lab
that puts kernel, image, module and accelerator together for guests.
"""
