"""Switchyard: a job backend for AI workloads.

The Celery app lives in project.celery (`celery -A project` finds it). It is not imported
here: the sandbox host imports project.queues and must not pick up Django from it.
"""
