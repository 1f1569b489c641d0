"""Benchmarks: commands that print figures side by side and write JSON.
"""
