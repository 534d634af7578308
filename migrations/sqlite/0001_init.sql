-- Times are milliseconds since the Unix epoch (BIGINT), the same in both back ends.
CREATE TABLE studies (
    study_uid          TEXT PRIMARY KEY,
    patient_id         TEXT,
    patient_name       TEXT,
    study_date         TEXT,
    accession_number   TEXT,
    study_description  TEXT,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL
);

CREATE TABLE series (
    series_uid              TEXT PRIMARY KEY,
    study_uid               TEXT NOT NULL REFERENCES studies(study_uid),
    modality                TEXT NOT NULL,
    series_number           BIGINT,
    series_description      TEXT,
    frame_of_reference_uid  TEXT,
    -- PET: Number of Slices (0054,0081); completion needs this many distinct Image Index values.
    number_of_slices        BIGINT,
    -- Acquisition (or series) date-time as naive milliseconds, for pairing by time.
    acquired_at             BIGINT,
    instance_count          BIGINT NOT NULL DEFAULT 0,
    -- Bumped by every new or replaced instance; a job names the revisions it was built from.
    revision                BIGINT NOT NULL DEFAULT 0,
    complete_revision       BIGINT,
    completed_at            BIGINT,
    first_received_at       BIGINT NOT NULL,
    last_received_at        BIGINT NOT NULL
);
CREATE INDEX series_study ON series(study_uid);
CREATE INDEX series_incomplete ON series(last_received_at) WHERE complete_revision IS NOT revision;

CREATE TABLE instances (
    sop_instance_uid     TEXT PRIMARY KEY,
    series_uid           TEXT NOT NULL REFERENCES series(series_uid),
    sop_class_uid        TEXT NOT NULL,
    transfer_syntax_uid  TEXT NOT NULL,
    instance_number      BIGINT,
    image_index          BIGINT,
    path                 TEXT NOT NULL,
    size_bytes           BIGINT NOT NULL,
    sha256               TEXT NOT NULL,
    calling_ae           TEXT NOT NULL,
    received_at          BIGINT NOT NULL
);
CREATE INDEX instances_series ON instances(series_uid);

CREATE TABLE jobs (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid           TEXT NOT NULL REFERENCES studies(study_uid),
    pet_series_uid      TEXT NOT NULL REFERENCES series(series_uid),
    ct_series_uid       TEXT NOT NULL REFERENCES series(series_uid),
    pet_revision        BIGINT NOT NULL,
    ct_revision         BIGINT NOT NULL,
    needs_registration  BIGINT NOT NULL,
    -- queued | running | succeeded | failed | dead | superseded
    state               TEXT NOT NULL,
    stage               TEXT,
    attempts            BIGINT NOT NULL DEFAULT 0,
    run_at              BIGINT NOT NULL,
    lease_owner         TEXT,
    heartbeat_at        BIGINT,
    last_error          TEXT,
    superseded_by       BIGINT,
    created_at          BIGINT NOT NULL,
    started_at          BIGINT,
    finished_at         BIGINT,
    UNIQUE (pet_series_uid, ct_series_uid, pet_revision, ct_revision)
);
CREATE INDEX jobs_claimable ON jobs(run_at) WHERE state = 'queued';
CREATE INDEX jobs_pet ON jobs(pet_series_uid);
CREATE INDEX jobs_ct ON jobs(ct_series_uid);
