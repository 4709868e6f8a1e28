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
SELECT date_trunc(:bucket, created_time, 'UTC') AS bucket,
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
-- The counting reads only job_attempts_failures_idx; the messages are fetched for the top rows alone.
WITH f AS (
    SELECT CASE :group_by WHEN 'type' THEN type WHEN 'queue' THEN queue ELSE 'all' END AS key,
           error_code,
           count(*) AS attempts,
           count(DISTINCT job_id) AS jobs,
           max(finished_time) AS last_seen
    FROM job_attempts
    WHERE finished_time >= :from AND finished_time < :to
      AND outcome <> 'COMPLETED' AND error_code IS NOT NULL
      AND (CAST(:type AS text) IS NULL OR type = :type)
      AND (CAST(:queue AS text) IS NULL OR queue = :queue)
      AND (CAST(:owner AS text) IS NULL OR owner = :owner)
    GROUP BY 1, 2
    ORDER BY attempts DESC, key, error_code
    LIMIT :limit
)
SELECT f.key, f.error_code, f.attempts, f.jobs, f.last_seen,
       (SELECT a.error ->> 'message'
        FROM job_attempts a
        WHERE a.finished_time = f.last_seen AND a.error_code = f.error_code
          AND a.outcome <> 'COMPLETED'
          AND CASE :group_by WHEN 'type' THEN a.type WHEN 'queue' THEN a.queue ELSE 'all' END = f.key
          AND (CAST(:type AS text) IS NULL OR a.type = :type)
          AND (CAST(:queue AS text) IS NULL OR a.queue = :queue)
          AND (CAST(:owner AS text) IS NULL OR a.owner = :owner)
        ORDER BY a.job_id, a.number DESC
        LIMIT 1) AS latest_message
FROM f
ORDER BY f.attempts DESC, f.key, f.error_code;

-- name: rollup
-- Summary and timeseries over long windows: rolled-up days and hours from job_rollups, plus
-- ranges of created_time read live from jobs, bucketed the same way (the bucket parameter is
-- NULL for the summary). Counts are exact; percentiles are read from the merged histograms
-- (nearest rank; the bucket's middle, within 4.4 percent).
WITH r AS NOT MATERIALIZED (
    SELECT CASE WHEN CAST(:bucket AS text) IS NULL THEN timestamptz 'epoch' ELSE date_trunc(:bucket, period, 'UTC') END AS bucket,
           CASE :group_by WHEN 'type' THEN type WHEN 'queue' THEN queue ELSE 'all' END COLLATE "C" AS key,
           jobs, completed, failed, cancelled, active, retries, ran, retried,
           wait_buckets, wait_counts, run_buckets, run_counts, wait_p, run_p
    FROM job_rollups
    WHERE ((grain = 'day' AND period = ANY(CAST(:days AS timestamptz[])))
           OR (grain = 'hour' AND period = ANY(CAST(:hours AS timestamptz[]))))
      -- the rows summed over exactly what the report neither filters nor groups by
      AND level = :level
      AND (CAST(:type AS text) IS NULL OR type = :type)
      AND (CAST(:queue AS text) IS NULL OR queue = :queue)
      AND (CAST(:owner AS text) IS NULL OR owner = :owner)
),
l AS MATERIALIZED (
    SELECT CASE WHEN CAST(:bucket AS text) IS NULL THEN timestamptz 'epoch' ELSE date_trunc(:bucket, j.created_time, 'UTC') END AS bucket,
           CASE :group_by WHEN 'type' THEN j.type WHEN 'queue' THEN j.queue ELSE 'all' END COLLATE "C" AS key,
           j.state, j.attempts,
           reporting.duration_bucket(extract(epoch FROM j.started_time - j.scheduled_time)::float8) AS wb,
           reporting.duration_bucket(extract(epoch FROM j.done_time - j.started_time)::float8) AS rb
    FROM unnest(CAST(:starts AS timestamptz[]), CAST(:ends AS timestamptz[])) AS x(s, e)
    -- LATERAL: one index range scan per range, whatever the planner guesses of the ranges.
    CROSS JOIN LATERAL (
        SELECT * FROM jobs
        WHERE jobs.created_time >= x.s AND jobs.created_time < x.e
          AND (CAST(:type AS text) IS NULL OR type = :type)
          AND (CAST(:queue AS text) IS NULL OR queue = :queue)
          AND (CAST(:owner AS text) IS NULL OR owner = :owner)
        OFFSET 0  -- kept a subquery: not flattened into a join the planner may scan whole
    ) AS j
),
counts AS (
    SELECT bucket, key, sum(jobs)::bigint AS jobs, sum(completed)::bigint AS completed,
           sum(failed)::bigint AS failed, sum(cancelled)::bigint AS cancelled, sum(active)::bigint AS active,
           sum(retries)::bigint AS retries, sum(ran)::bigint AS ran, sum(retried)::bigint AS retried
    FROM (
        SELECT bucket, key, jobs, completed, failed, cancelled, active, retries, ran, retried FROM r
        UNION ALL
        SELECT bucket, key, count(*),
               count(*) FILTER (WHERE state = 'COMPLETED'),
               count(*) FILTER (WHERE state = 'FAILED'),
               count(*) FILTER (WHERE state = 'CANCELLED'),
               count(*) FILTER (WHERE state IN ('CREATED', 'QUEUED', 'RUNNING')),
               coalesce(sum(greatest(attempts - 1, 0)), 0),
               count(*) FILTER (WHERE attempts > 0),
               count(*) FILTER (WHERE attempts > 1)
        FROM l GROUP BY 1, 2
    ) AS c
    GROUP BY 1, 2
),
-- A point made of one rollup row and nothing read live takes that row's own percentiles (every
-- whole hour of an hourly timeseries); the others merge their histograms below.
single AS MATERIALIZED (
    SELECT bucket, key, min(wait_p) AS wait_p, min(run_p) AS run_p
    FROM r
    WHERE NOT EXISTS (SELECT 1 FROM l WHERE l.bucket = r.bucket AND l.key = r.key)
    GROUP BY 1, 2
    HAVING count(*) = 1
),
merged AS (
    SELECT r.* FROM r WHERE NOT EXISTS (SELECT 1 FROM single s WHERE s.bucket = r.bucket AND s.key = r.key)
),
-- metric 1: queue wait, 2: run time (the timeseries shows run times only: with_waits false).
hist AS (
    SELECT bucket, key, metric, b, sum(n)::bigint AS n
    FROM (
        SELECT bucket, key, 1 AS metric, u.b, u.n FROM merged r, unnest(r.wait_buckets, r.wait_counts) AS u(b, n)
        WHERE CAST(:with_waits AS boolean)
        UNION ALL
        SELECT bucket, key, 2, u.b, u.n FROM merged r, unnest(r.run_buckets, r.run_counts) AS u(b, n)
        UNION ALL
        SELECT bucket, key, 1, wb, count(*) FROM l WHERE wb IS NOT NULL AND CAST(:with_waits AS boolean) GROUP BY 1, 2, 4
        UNION ALL
        SELECT bucket, key, 2, rb, count(*) FROM l WHERE rb IS NOT NULL GROUP BY 1, 2, 4
    ) AS h
    GROUP BY 1, 2, 3, 4
),
pct AS (
    SELECT bucket, key, metric,
           reporting.histogram_percentiles(array_agg(b ORDER BY b), array_agg(n ORDER BY b), '{0.5,0.95,0.99}') AS p
    FROM hist
    GROUP BY 1, 2, 3
    UNION ALL
    SELECT bucket, key, 1, wait_p FROM single WHERE CAST(:with_waits AS boolean)
    UNION ALL
    SELECT bucket, key, 2, run_p FROM single
),
pivot AS (
    SELECT bucket, key,
           max(p[1]) FILTER (WHERE metric = 1) AS queue_wait_p50_s,
           max(p[2]) FILTER (WHERE metric = 1) AS queue_wait_p95_s,
           max(p[3]) FILTER (WHERE metric = 1) AS queue_wait_p99_s,
           max(p[1]) FILTER (WHERE metric = 2) AS run_p50_s,
           max(p[2]) FILTER (WHERE metric = 2) AS run_p95_s,
           max(p[3]) FILTER (WHERE metric = 2) AS run_p99_s
    FROM pct
    GROUP BY 1, 2
)
SELECT c.bucket, c.key, c.jobs, c.completed, c.failed, c.cancelled, c.active,
       c.completed::float8 / nullif(c.completed + c.failed + c.cancelled, 0) AS success_rate,
       c.retries,
       c.retried::float8 / nullif(c.ran, 0) AS retry_rate,
       p.queue_wait_p50_s, p.queue_wait_p95_s, p.queue_wait_p99_s, p.run_p50_s, p.run_p95_s, p.run_p99_s
FROM counts c
LEFT JOIN pivot p USING (bucket, key);
