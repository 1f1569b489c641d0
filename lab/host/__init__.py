"""The host machine: Debian packages, child processes that die with us, the cache.
"""
