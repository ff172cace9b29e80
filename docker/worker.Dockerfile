# A GPU worker: torch (CUDA build from PyPI), torchvision, AutoAttack, the library.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md LICENSE alembic.ini ./
COPY dyart dyart
COPY db db
COPY worker worker
COPY migrations migrations
RUN pip install --no-cache-dir '.[worker]'
# The solo pool runs the task in the worker's main process: only there does a warm
# shutdown (`docker stop`'s SIGTERM) reach the trainer, which saves its state at the
# next step and puts the job back in the queue without spending an attempt. Under
# prefork the job runs on in a child until the grace period ends and is killed, and
# every redeploy costs each running job an attempt. Give the container a stop grace
# period longer than one step plus a checkpoint save (docker-compose.yml: 120 s).
CMD ["celery", "-A", "worker.app", "worker", "--pool=solo", "--concurrency=1", \
     "--prefetch-multiplier=1", "--loglevel=INFO"]
# A solo worker busy training answers no `celery inspect ping`; its sweep thread
# touches a file every DYART_SWEEP_SECONDS instead, training or not (worker/alive.py).
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s CMD ["python", "-m", "worker.alive"]
