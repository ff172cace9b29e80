# The API image: no torch (the API never imports it), so it stays small.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md LICENSE alembic.ini ./
COPY dyart/__init__.py dyart/catalog.py dyart/config.py dyart/errors.py dyart/
COPY api api
COPY db db
COPY migrations migrations
# Installed as a package of its own beside api/ (pyproject.toml), where api.main
# looks for the dashboard: /app is not on the path once pip has installed.
COPY frontend frontend
RUN pip install --no-cache-dir '.[api]'
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/api/v1/health/ready', timeout=4)"
CMD ["dyart-service", "serve", "--no-worker", "--host", "0.0.0.0", "--port", "8000"]
