"""The Celery worker: runs training jobs and evaluations, reports to the database."""
