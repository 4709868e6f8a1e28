#!/usr/bin/env bash
# From an empty Google Cloud project to cloudjobs running on Cloud Run. See docs/deploy.md.
#
#   PROJECT_ID=my-project REGION=europe-west1 deploy/deploy.sh
#
# Safe to run again: each step creates what is missing and updates what exists (a new image,
# a new revision, the queues as queues.yaml says). Needs the Google Cloud CLI, signed in as
# someone who may create these resources (Owner, or Editor + Project IAM Admin), and openssl.
set -euo pipefail

# ----------------------------------------------------------------------------- settings
PROJECT_ID="${PROJECT_ID:?set PROJECT_ID to the Google Cloud project id}"
REGION="${REGION:-us-central1}"                  # Cloud Run, Cloud Tasks, Cloud SQL, Scheduler
SERVICE="${SERVICE:-cloudjobs}"                  # the Cloud Run service
REPOSITORY="${REPOSITORY:-cloudjobs}"            # the Artifact Registry repository
SQL_INSTANCE="${SQL_INSTANCE:-cloudjobs}"        # the Cloud SQL instance
SQL_TIER="${SQL_TIER:-db-custom-1-3840}"         # 1 vCPU, 3.75 GB; see docs/deploy.md
SQL_DATABASE="${SQL_DATABASE:-cloudjobs}"
RUNTIME_SA_NAME="${RUNTIME_SA_NAME:-cloudjobs-runtime}"  # the service, its migrate and doctor jobs
INVOKER_SA_NAME="${INVOKER_SA_NAME:-cloudjobs-invoker}"  # Cloud Tasks and Cloud Scheduler sign as it
QUEUES_SA_NAME="${QUEUES_SA_NAME:-cloudjobs-queues}"     # `cloudjobs queues sync`, nothing else
SWEEP_SCHEDULE="${SWEEP_SCHEDULE:-* * * * *}"    # Cloud Scheduler calls /handlers/sweep
OTEL_ENABLED="${OTEL_ENABLED:-false}"            # true: traces to Cloud Trace (docs/observability.md)
IMAGE_TAG="${IMAGE_TAG:-$(date -u +%Y%m%d-%H%M%S)}"

# ----------------------------------------------------------------------------- derived
export CLOUDSDK_CORE_PROJECT="$PROJECT_ID"       # every gcloud call below acts on this project
export CLOUDSDK_CORE_DISABLE_PROMPTS=1
cd "$(dirname "$0")/.."                          # the repository root: the build's source

PROJECT_NUMBER="$(gcloud projects describe "$PROJECT_ID" --format='value(projectNumber)')"
RUNTIME_SA="${RUNTIME_SA_NAME}@${PROJECT_ID}.iam.gserviceaccount.com"
INVOKER_SA="${INVOKER_SA_NAME}@${PROJECT_ID}.iam.gserviceaccount.com"
QUEUES_SA="${QUEUES_SA_NAME}@${PROJECT_ID}.iam.gserviceaccount.com"
DB_USER="${RUNTIME_SA%.gserviceaccount.com}"     # a PostgreSQL IAM user drops the domain's tail
IMAGE="${REGION}-docker.pkg.dev/${PROJECT_ID}/${REPOSITORY}/cloudjobs:${IMAGE_TAG}"
# Cloud Run's deterministic URL. Tasks call URL/handlers/run, and their OIDC tokens carry URL
# as audience: Cloud Run accepts it, and the handler requires it (OIDC_AUDIENCE defaults to it).
URL="https://${SERVICE}-${PROJECT_NUMBER}.${REGION}.run.app"

# What the app reads (api/config.py). The migrate job needs only the database part.
DB_ENV="INSTANCE_CONNECTION_NAME=${PROJECT_ID}:${REGION}:${SQL_INSTANCE}"
DB_ENV+=",DB_NAME=${SQL_DATABASE},DB_USER=${DB_USER},DB_IAM_AUTH=true"
QUEUES_ENV="GOOGLE_CLOUD_PROJECT=${PROJECT_ID},CLOUD_TASKS_LOCATION=${REGION}"
APP_ENV="${DB_ENV},${QUEUES_ENV}"
APP_ENV+=",HANDLER_BASE_URL=${URL},HANDLER_AUTH=oidc,TASKS_SERVICE_ACCOUNT=${INVOKER_SA}"
APP_ENV+=",OTEL_ENABLED=${OTEL_ENABLED}"

step() { printf '\n==> %s\n' "$*"; }
exists() { "$@" >/dev/null 2>&1; }              # whether a `describe` finds the resource

# ----------------------------------------------------------------------------- APIs
step "Enabling the APIs"
gcloud services enable \
  run.googleapis.com cloudtasks.googleapis.com sqladmin.googleapis.com \
  cloudscheduler.googleapis.com iam.googleapis.com artifactregistry.googleapis.com \
  cloudbuild.googleapis.com

# ----------------------------------------------------------------------------- service accounts
step "Service accounts"
for name in "$RUNTIME_SA_NAME" "$INVOKER_SA_NAME" "$QUEUES_SA_NAME"; do
  exists gcloud iam service-accounts describe "${name}@${PROJECT_ID}.iam.gserviceaccount.com" \
    || gcloud iam service-accounts create "$name" --display-name="cloudjobs: ${name#cloudjobs-}"
done

grant_project() {  # grant_project MEMBER ROLE
  gcloud projects add-iam-policy-binding "$PROJECT_ID" --member="$1" --role="$2" \
    --condition=None --format=none
}

step "Roles of the runtime service account"
for role in \
  roles/cloudsql.client \
  roles/cloudsql.instanceUser \
  roles/cloudtasks.enqueuer \
  roles/cloudtasks.viewer \
  roles/cloudtasks.taskDeleter \
  roles/cloudscheduler.viewer \
  roles/cloudscheduler.jobRunner; do
  grant_project "serviceAccount:${RUNTIME_SA}" "$role"
done
if [[ "$OTEL_ENABLED" == "true" ]]; then
  grant_project "serviceAccount:${RUNTIME_SA}" roles/cloudtrace.agent
fi
# Creating a task that carries an OIDC token for the invoker is acting as the invoker.
gcloud iam service-accounts add-iam-policy-binding "$INVOKER_SA" \
  --member="serviceAccount:${RUNTIME_SA}" --role=roles/iam.serviceAccountUser --format=none

step "Roles of the queues service account (queues and schedules)"
grant_project "serviceAccount:${QUEUES_SA}" roles/cloudtasks.queueAdmin
# `cloudjobs schedules sync` creates the Cloud Scheduler jobs of schedules.yaml; each signs its
# OIDC token as the invoker, and making a job that does is acting as the invoker.
grant_project "serviceAccount:${QUEUES_SA}" roles/cloudscheduler.admin
gcloud iam service-accounts add-iam-policy-binding "$INVOKER_SA" \
  --member="serviceAccount:${QUEUES_SA}" --role=roles/iam.serviceAccountUser --format=none

# ----------------------------------------------------------------------------- Cloud SQL
step "Cloud SQL instance ${SQL_INSTANCE} (the first creation takes several minutes)"
if ! exists gcloud sql instances describe "$SQL_INSTANCE"; then
  gcloud sql instances create "$SQL_INSTANCE" \
    --database-version=POSTGRES_15 --edition=ENTERPRISE --tier="$SQL_TIER" --region="$REGION" \
    --database-flags=cloudsql.iam_authentication=on
fi
exists gcloud sql databases describe "$SQL_DATABASE" --instance="$SQL_INSTANCE" \
  || gcloud sql databases create "$SQL_DATABASE" --instance="$SQL_INSTANCE"
exists gcloud sql users describe "$DB_USER" --instance="$SQL_INSTANCE" \
  || gcloud sql users create "$DB_USER" --instance="$SQL_INSTANCE" --type=cloud_iam_service_account
# The migrations create tables in the database, which the API made cloudsqlsuperuser's.
gcloud sql users assign-roles "$DB_USER" --instance="$SQL_INSTANCE" \
  --type=CLOUD_IAM_SERVICE_ACCOUNT --database-roles=cloudsqlsuperuser

# ----------------------------------------------------------------------------- image
step "Building ${IMAGE}"
exists gcloud artifacts repositories describe "$REPOSITORY" --location="$REGION" \
  || gcloud artifacts repositories create "$REPOSITORY" --repository-format=docker \
       --location="$REGION" --description="cloudjobs images"
# Projects whose builds run as the Compute Engine default service account (the default for
# new projects) must let it write images and logs.
COMPUTE_SA="${PROJECT_NUMBER}-compute@developer.gserviceaccount.com"
if exists gcloud iam service-accounts describe "$COMPUTE_SA"; then
  grant_project "serviceAccount:${COMPUTE_SA}" roles/cloudbuild.builds.builder
fi
gcloud builds submit --region="$REGION" --tag="$IMAGE" .

# ----------------------------------------------------------------------------- jobs
run_job() {  # run_job NAME SERVICE_ACCOUNT ENV ARGS: deploy a Cloud Run job on the image, run it
  gcloud run jobs deploy "$1" --region="$REGION" --image="$IMAGE" --service-account="$2" \
    --set-env-vars="$3" --command=cloudjobs --args="$4" --max-retries=0 --task-timeout=10m
  gcloud run jobs execute "$1" --region="$REGION" --wait
}

step "Migrating the database to head"
run_job cloudjobs-migrate "$RUNTIME_SA" "$DB_ENV" migrate

step "Creating or updating the queues of queues.yaml"
run_job cloudjobs-queues-sync "$QUEUES_SA" "$QUEUES_ENV" queues,sync

# ----------------------------------------------------------------------------- the service
step "Deploying the service ${SERVICE}"
SERVICE_ENV="$APP_ENV"
if ! exists gcloud run services describe "$SERVICE" --region="$REGION"; then
  # Page tokens are signed with this key; it is made once and kept by later deploys
  # (--update-env-vars leaves variables it does not name as they are).
  SERVICE_ENV+=",PAGE_TOKEN_KEY=$(openssl rand -hex 32)"
fi
# --timeout: a job runs inside its request, for up to the queue's dispatch deadline (30 min max).
gcloud run deploy "$SERVICE" --region="$REGION" --image="$IMAGE" \
  --service-account="$RUNTIME_SA" --update-env-vars="$SERVICE_ENV" \
  --no-allow-unauthenticated --timeout=1800

step "Letting the invoker call the service"
gcloud run services add-iam-policy-binding "$SERVICE" --region="$REGION" \
  --member="serviceAccount:${INVOKER_SA}" --role=roles/run.invoker --format=none

# ----------------------------------------------------------------------------- the sweeper
step "Cloud Scheduler: POST ${URL}/handlers/sweep (${SWEEP_SCHEDULE})"
SWEEP_FLAGS=(--location="$REGION" --schedule="$SWEEP_SCHEDULE" --uri="${URL}/handlers/sweep"
  --http-method=POST --oidc-service-account-email="$INVOKER_SA" --oidc-token-audience="$URL"
  --attempt-deadline=5m)
if exists gcloud scheduler jobs describe cloudjobs-sweep --location="$REGION"; then
  gcloud scheduler jobs update http cloudjobs-sweep "${SWEEP_FLAGS[@]}"
else
  gcloud scheduler jobs create http cloudjobs-sweep "${SWEEP_FLAGS[@]}"
fi

# ----------------------------------------------------------------------------- schedules
step "Cloud Scheduler jobs of schedules.yaml (cloudjobs schedules sync)"
# The app's variables: the job types (JOB_MODULES) each schedule's job is checked against, the
# URL fires go to, and the invoker they are signed as (SCHEDULER_SERVICE_ACCOUNT defaults to it).
run_job cloudjobs-schedules-sync "$QUEUES_SA" "$APP_ENV" schedules,sync

# ----------------------------------------------------------------------------- checks
step "cloudjobs doctor, as the service runs (same variables, same service account)"
run_job cloudjobs-doctor "$RUNTIME_SA" "$APP_ENV" doctor

step "A first job"
TOKEN="$(gcloud auth print-identity-token)"
curl -fsS -X POST "${URL}/v1/jobs" -H "Authorization: Bearer ${TOKEN}" \
  -H 'Content-Type: application/json' -d '{"type": "echo", "payload": {"hello": "cloudjobs"}}'
printf '\n\ncloudjobs runs at %s\n' "$URL"
