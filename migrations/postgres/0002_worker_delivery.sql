-- Worker and delivery. Job states now: queued | running | delivering | succeeded | failed | dead
-- | superseded. `delivering`: the pipeline's outputs are recorded in `results` and one
-- `deliveries` row per destination is still pending; processing never runs again for it.

-- When the pipeline finished (its outputs recorded), and how long it ran.
ALTER TABLE jobs ADD COLUMN processed_at BIGINT;
ALTER TABLE jobs ADD COLUMN process_ms BIGINT;

-- The DICOM objects a job produced (files under <storage.dir>/results/job-<id>/).
CREATE TABLE results (
    job_id              BIGINT NOT NULL REFERENCES jobs(id),
    sop_instance_uid    TEXT NOT NULL,
    sop_class_uid       TEXT NOT NULL,
    series_uid          TEXT,
    -- Relative to the storage root.
    path                TEXT NOT NULL,
    -- The file's stem (seg, sr, mip, ...).
    kind                TEXT NOT NULL,
    created_at          BIGINT NOT NULL,
    PRIMARY KEY (job_id, sop_instance_uid)
);

-- One row per job and configured destination.
CREATE TABLE deliveries (
    job_id              BIGINT NOT NULL REFERENCES jobs(id),
    destination         TEXT NOT NULL,
    -- pending | sending | sent | failed
    state               TEXT NOT NULL,
    attempts            BIGINT NOT NULL DEFAULT 0,
    -- pending: earliest next try; sending: when the sender's lease runs out.
    next_attempt_at     BIGINT NOT NULL,
    lease_owner         TEXT,
    last_error          TEXT,
    created_at          BIGINT NOT NULL,
    sent_at             BIGINT,
    PRIMARY KEY (job_id, destination)
);
CREATE INDEX deliveries_due ON deliveries(next_attempt_at) WHERE state IN ('pending', 'sending');
CREATE INDEX jobs_running ON jobs(heartbeat_at) WHERE state = 'running';
