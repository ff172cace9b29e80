# A GPU worker: torch (CUDA build from PyPI), torchvision, AutoAttack, the library.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY dyart dyart
COPY db db
COPY worker worker
COPY migrations migrations
RUN pip install --no-cache-dir '.[worker]'
CMD ["celery", "-A", "worker.app", "worker", "--concurrency=1", "--prefetch-multiplier=1", "--loglevel=INFO"]
