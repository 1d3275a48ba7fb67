-- The event store: the global log is also the outbox the relay publishes from.
CREATE TABLE IF NOT EXISTS {schema}.events (
    -- (transaction id << 16) + the event's ordinal in its transaction: positions follow
    -- transaction ids by construction (see append_events and docs/adr/0003).
    position        bigint PRIMARY KEY,
    stream_id       text NOT NULL,
    aggregate_type  text NOT NULL,
    version         bigint NOT NULL CHECK (version > 0),
    event_name      text NOT NULL,
    event_version   integer NOT NULL,
    payload         jsonb NOT NULL,
    event_id        uuid NOT NULL,
    correlation_id  uuid NOT NULL,
    causation_id    uuid,
    created_at      timestamptz NOT NULL,
    meta            jsonb,
    CONSTRAINT events_stream_version UNIQUE (stream_id, version)
);

CREATE TABLE IF NOT EXISTS {schema}.snapshots (
    aggregate_type  text NOT NULL,
    stream_id       text NOT NULL,
    version         bigint NOT NULL,
    state           jsonb NOT NULL,
    PRIMARY KEY (aggregate_type, stream_id)
);

CREATE TABLE IF NOT EXISTS {schema}.checkpoints (
    name            text PRIMARY KEY,
    position        bigint NOT NULL
);

-- Appends to one stream. Each event's position is its transaction's id shifted left by 16
-- bits plus its ordinal within the transaction, so positions follow transaction ids without
-- any lock; readers return only positions below the oldest running transaction's id (shifted
-- the same way). Returns the new rows, or one row with only `out_actual` set when the stream
-- is not at the expected version.
-- Readers are notified by the client after commit (a NOTIFY inside the transaction would
-- serialize every commit on the notification queue's lock).
CREATE OR REPLACE FUNCTION {schema}.append_events(
    p_stream text,
    p_type text,
    p_expected bigint,
    p_check boolean,
    p_names text[],
    p_versions integer[],
    p_payloads jsonb[],
    p_event_ids uuid[],
    p_correlations uuid[],
    p_causations uuid[],
    p_created timestamptz[],
    p_metas jsonb[]
) RETURNS TABLE (out_position bigint, out_version bigint, out_actual bigint)
LANGUAGE plpgsql AS $fn$
DECLARE
    v_current bigint;
    v_xid bigint;
    v_base bigint;
    v_fresh boolean;
BEGIN
    SELECT coalesce(max(e.version), 0) INTO v_current
      FROM {schema}.events e WHERE e.stream_id = p_stream;
    IF p_check AND v_current <> p_expected THEN
        RETURN QUERY SELECT NULL::bigint, NULL::bigint, v_current;
        RETURN;
    END IF;
    -- Earlier writes of this transaction (an earlier append) may have taken ordinals.
    v_fresh := pg_current_xact_id_if_assigned() IS NULL;
    v_xid := pg_current_xact_id()::text::bigint;
    IF v_xid >= (1::bigint << 47) THEN
        RAISE EXCEPTION 'transaction id % is beyond the range positions can encode', v_xid
            USING ERRCODE = '55000';
    END IF;
    v_base := v_xid << 16;
    IF NOT v_fresh THEN
        SELECT coalesce(max(e.position) + 1, v_base) INTO v_base
          FROM {schema}.events e
         WHERE e.position >= (v_xid << 16) AND e.position < ((v_xid + 1) << 16);
        IF v_base + cardinality(p_names) > ((v_xid + 1) << 16) THEN
            RAISE EXCEPTION 'more than 65536 events in one transaction' USING ERRCODE = '55000';
        END IF;
    END IF;
    -- A concurrent append to the same stream fails here on the unique (stream, version)
    -- index (SQLSTATE 23505); the client reports it as a conflict.
    RETURN QUERY
    INSERT INTO {schema}.events AS e (position, stream_id, aggregate_type, version,
        event_name, event_version, payload, event_id, correlation_id, causation_id,
        created_at, meta)
    SELECT v_base + t.ord - 1, p_stream, p_type, v_current + t.ord, t.name, t.ver,
           t.payload, t.event_id, t.correlation, t.causation, t.created, t.meta
      FROM unnest(p_names, p_versions, p_payloads, p_event_ids, p_correlations,
                  p_causations, p_created, p_metas)
           WITH ORDINALITY AS t(name, ver, payload, event_id, correlation, causation,
                                created, meta, ord)
    RETURNING e.position, e.version, NULL::bigint;
END
$fn$;
