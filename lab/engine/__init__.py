"""The scenario engine: the scenario format, planning, running scenarios on guests in parallel,
verdicts and the JSON-lines results.
"""
