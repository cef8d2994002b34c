"""Celery workers: thin tasks that pass ids to the anyband library."""
