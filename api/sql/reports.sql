-- Reporting queries. Each block starts with `-- name: NAME` and a one-line description; the
-- parameters are :from, :to (the window on created_time, or finished_time for attempts),
-- :type, :queue, :owner (NULL: all), :group_by ('type', 'queue' or 'none').

-- name: summary
-- Jobs created in the window per group: outcomes, success and retry rates, queue wait and run time percentiles.
SELECT CASE :group_by WHEN 'type' THEN type WHEN 'queue' THEN queue ELSE 'all' END AS key,
       count(*) AS jobs,
       count(*) FILTER (WHERE state = 'COMPLETED') AS completed,
       count(*) FILTER (WHERE state = 'FAILED') AS failed,
       count(*) FILTER (WHERE state = 'CANCELLED') AS cancelled,
       count(*) FILTER (WHERE state IN ('CREATED', 'QUEUED', 'RUNNING')) AS active,
       (count(*) FILTER (WHERE state = 'COMPLETED'))::float8
           / nullif(count(*) FILTER (WHERE state IN ('COMPLETED', 'FAILED', 'CANCELLED')), 0) AS success_rate,
       coalesce(sum(greatest(attempts - 1, 0)), 0) AS retries,
       (count(*) FILTER (WHERE attempts > 1))::float8 / nullif(count(*) FILTER (WHERE attempts > 0), 0) AS retry_rate,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_time - scheduled_time)) AS queue_wait_p50_s,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM started_time - scheduled_time)) AS queue_wait_p95_s,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM started_time - scheduled_time)) AS queue_wait_p99_s,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM done_time - started_time)) AS run_p50_s,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM done_time - started_time)) AS run_p95_s,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM done_time - started_time)) AS run_p99_s
FROM jobs
WHERE created_time >= :from AND created_time < :to
  AND (CAST(:type AS text) IS NULL OR type = :type)
  AND (CAST(:queue AS text) IS NULL OR queue = :queue)
  AND (CAST(:owner AS text) IS NULL OR owner = :owner)
GROUP BY 1
ORDER BY jobs DESC, key;

-- name: timeseries
-- Jobs created per bucket (minute, hour or day) and group: outcomes, retries and run time percentiles.
SELECT date_trunc(:bucket, created_time) AS bucket,
       CASE :group_by WHEN 'type' THEN type WHEN 'queue' THEN queue ELSE 'all' END AS key,
       count(*) AS jobs,
       count(*) FILTER (WHERE state = 'COMPLETED') AS completed,
       count(*) FILTER (WHERE state = 'FAILED') AS failed,
       count(*) FILTER (WHERE state = 'CANCELLED') AS cancelled,
       coalesce(sum(greatest(attempts - 1, 0)), 0) AS retries,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM done_time - started_time)) AS run_p50_s,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM done_time - started_time)) AS run_p95_s
FROM jobs
WHERE created_time >= :from AND created_time < :to
  AND (CAST(:type AS text) IS NULL OR type = :type)
  AND (CAST(:queue AS text) IS NULL OR queue = :queue)
  AND (CAST(:owner AS text) IS NULL OR owner = :owner)
GROUP BY 1, 2
ORDER BY 1, 2;

-- name: failures
-- Failed attempts that ended in the window, by group and error code, most frequent first, with the latest message.
SELECT CASE :group_by WHEN 'type' THEN type WHEN 'queue' THEN queue ELSE 'all' END AS key,
       error_code,
       count(*) AS attempts,
       count(DISTINCT job_id) AS jobs,
       max(finished_time) AS last_seen,
       (array_agg(error ->> 'message' ORDER BY finished_time DESC))[1] AS latest_message
FROM job_attempts
WHERE finished_time >= :from AND finished_time < :to
  AND outcome <> 'COMPLETED' AND error_code IS NOT NULL
  AND (CAST(:type AS text) IS NULL OR type = :type)
  AND (CAST(:queue AS text) IS NULL OR queue = :queue)
  AND (CAST(:owner AS text) IS NULL OR owner = :owner)
GROUP BY 1, 2
ORDER BY attempts DESC, key, error_code
LIMIT :limit;
