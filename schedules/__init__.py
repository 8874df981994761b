"""When lifecycle runs fire: cron as robfig/cron and Kubeflow read it, intervals, and the catch-up
and concurrency decisions the scheduler (tasks/scheduling.py) acts on. Pure: no Prefect, no I/O.
See schedules/README.md.
"""
