"""The Celery app; `celery -A workers worker` runs it."""

from celery import Celery

app = Celery("agentic", include=["workers.tasks"])
app.config_from_object("celeryconfig")
