"""Switchyard: a job backend for AI workloads."""

from project.celery import app as celery_app

__all__ = ("celery_app",)
