"""The service's shared data layer: settings, tables, sessions, job states, tokens.

Used by both the API and the worker; imports no torch, FastAPI or Celery.
"""
