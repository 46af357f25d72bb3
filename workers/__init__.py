"""What runs on worker hosts: one plain-Python executor per job kind, and the thin Celery tasks."""
