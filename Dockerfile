# cloudjobs for Cloud Run (and any container platform). See docs/deploy.md.
#   docker build -t cloudjobs .                                   # the app (the last stage)
#   docker build --target emulator -t cloudjobs-emulator .        # the Cloud Tasks emulator alone
#                                                                 # (docs/emulator.md)
# What is installed is requirements.txt, the lock (deploy/lock.sh): every dependency pinned,
# with hashes, the otel and psycopg extras included (OTEL_ENABLED=true and DB_DRIVER=psycopg
# work), so the image runs what the tests ran.
FROM python:3.12-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The lock first, in a layer of its own: a change to the source alone reuses it.
COPY requirements.txt /tmp/requirements.txt
RUN pip install --require-hashes -r /tmp/requirements.txt && rm /tmp/requirements.txt

# The packages are installed from a copy of the source that is then removed, so the app runs
# from site-packages and the working directory holds only what gunicorn and the app read.
# --no-deps: their dependencies are the lock's, installed above; pip cannot hash a folder.
COPY . /src
RUN pip install --no-deps /src/clients/python /src \
 && rm -rf /src

# A home of its own: gunicorn keeps its control socket there, the emulator its state.
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin cloudjobs


# The Cloud Tasks (v2, v2beta3) and Cloud Scheduler emulator, for stacks in any language:
#   docker run -p 8123:8123 -p 8124:8124 -v tasks:/home/cloudjobs/state cloudjobs-emulator \
#     --app-engine-host http://host.docker.internal:8080
# gRPC on 8123, REST and the OIDC certs on 8124; queues, tasks and tombstones kept in the volume.
FROM base AS emulator
USER 10001
EXPOSE 8123 8124
ENTRYPOINT ["python", "-m", "emulator", "--host", "0.0.0.0", "--state-dir", "/home/cloudjobs/state"]


# The app: the default target.
FROM base AS app
WORKDIR /app
COPY gunicorn.conf.py queues.yaml schedules.yaml ./

USER 10001

# Cloud Run sets PORT; gunicorn.conf.py binds to it (8080 when unset).
ENV PORT=8080
EXPOSE 8080
CMD ["gunicorn", "-c", "gunicorn.conf.py", "api:create_app()"]
