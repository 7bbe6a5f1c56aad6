-- The historian: every document the stations publish, the rejects, the audit chain.
CREATE TABLE results (
    message_id      text PRIMARY KEY,
    station         text NOT NULL,
    sequence        bigint NOT NULL,
    lot_id          text,
    sample_id       text,
    measured_at     timestamptz NOT NULL,
    replayed        boolean NOT NULL,
    replayed_copies integer NOT NULL DEFAULT 0,   -- further copies received after the stored one
    stored_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    doc             jsonb NOT NULL
);
CREATE INDEX results_lot ON results (lot_id, measured_at);
CREATE INDEX results_station ON results (station, measured_at DESC);
CREATE INDEX results_sample ON results (lot_id, sample_id);

CREATE TABLE alarms (
    message_id      text PRIMARY KEY,
    station         text NOT NULL,
    raised_at       timestamptz NOT NULL,
    kind            text NOT NULL,
    severity        text NOT NULL,
    replayed_copies integer NOT NULL DEFAULT 0,
    stored_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    doc             jsonb NOT NULL
);
CREATE INDEX alarms_station ON alarms (station, raised_at DESC);

-- Health reports carry no message_id: a station's report is identified by its time.
CREATE TABLE health_reports (
    station     text NOT NULL,
    reported_at timestamptz NOT NULL,
    stored_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    doc         jsonb NOT NULL,
    PRIMARY KEY (station, reported_at)
);

-- Availability: the latest retained status per station, and every change of it.
CREATE TABLE station_status (
    station    text PRIMARY KEY,
    state      text NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE rejects (
    id          bigserial PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    topic       text NOT NULL,
    payload     bytea NOT NULL,
    reason      text NOT NULL
);

-- Lots declared at the plant (their spec), and the lab's dissolution results.
CREATE TABLE lots (
    lot_id       text PRIMARY KEY,
    composition  jsonb NOT NULL,
    tolerance_pp double precision NOT NULL DEFAULT 5.0,
    declared_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    declared_by  text NOT NULL
);

CREATE TABLE reference_results (
    id          bigserial PRIMARY KEY,
    lot_id      text NOT NULL,
    sample_id   text NOT NULL,
    method      text NOT NULL,
    composition jsonb NOT NULL,
    entered_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    entered_by  text NOT NULL
);
CREATE INDEX reference_sample ON reference_results (lot_id, sample_id);

-- SPC: rule violations (stored once, however often or by whichever collector they are found).
CREATE TABLE spc_violations (
    violation_id text PRIMARY KEY,            -- uuid5 of lot, fibre, rule and the result that completed it
    lot_id       text NOT NULL,
    fibre        text NOT NULL,
    rule         text NOT NULL,
    message_id   text NOT NULL REFERENCES results (message_id),
    value        double precision NOT NULL,
    centre       double precision NOT NULL,
    sigma        double precision NOT NULL,
    found_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    published_at timestamptz
);
CREATE INDEX spc_violations_lot ON spc_violations (lot_id, fibre);
CREATE INDEX spc_violations_unpublished ON spc_violations (found_at) WHERE published_at IS NULL;

-- The audit trail: append-only, each entry's hash covers the previous one's.
CREATE TABLE audit_log (
    seq        bigint PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind       text NOT NULL,       -- result, alarm, health, status, reject, lot, reference
    ref        text NOT NULL,       -- the record's key in its table
    doc_sha256 text NOT NULL,       -- sha256 of the record's canonical JSON
    prev_hash  text NOT NULL,
    hash       text NOT NULL
);
CREATE INDEX audit_ref ON audit_log (kind, ref);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP;
END $$;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
