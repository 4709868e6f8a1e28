# cloudjobs for Cloud Run (and any container platform). See docs/deploy.md.
#   docker build -t cloudjobs .                      # with the otel extra (OTEL_ENABLED=true works)
#   docker build --build-arg EXTRAS= -t cloudjobs .  # without it
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

ARG EXTRAS=otel

# The package is installed from a copy of the source that is then removed, so the app runs
# from site-packages and the working directory holds only what gunicorn and the app read.
COPY . /src
RUN pip install /src/clients/python "/src${EXTRAS:+[$EXTRAS]}" \
 && rm -rf /src

WORKDIR /app
COPY gunicorn.conf.py queues.yaml ./

# A home of its own: gunicorn keeps its control socket there.
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin cloudjobs
USER 10001

# Cloud Run sets PORT; gunicorn.conf.py binds to it (8080 when unset).
ENV PORT=8080
EXPOSE 8080
CMD ["gunicorn", "-c", "gunicorn.conf.py", "api:create_app()"]
