"""Reporters of finished runs: the summary table, JUnit XML, the HTML report.
"""
