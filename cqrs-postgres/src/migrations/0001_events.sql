-- The event store: the global log is also the outbox the relay publishes from.
CREATE TABLE IF NOT EXISTS {schema}.events (
    position        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The appending transaction: readers only return rows of finished transactions, and
    -- positions are taken in transaction-id order (see append_events and docs/adr/0003).
    xid             xid8 NOT NULL DEFAULT pg_current_xact_id(),
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

-- Appends to one stream: checks the expected version, takes positions and the transaction id
-- under a short lock (released before commit, so commits still group), and notifies readers
-- at commit. Returns the new rows, or one row with only `actual` set on a conflict.
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
BEGIN
    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        RAISE EXCEPTION 'append_events must be the first write of its transaction'
            USING ERRCODE = '55000';
    END IF;
    PERFORM pg_advisory_lock({lock_key});
    BEGIN
        SELECT coalesce(max(e.version), 0) INTO v_current
          FROM {schema}.events e WHERE e.stream_id = p_stream;
        IF p_check AND v_current <> p_expected THEN
            PERFORM pg_advisory_unlock({lock_key});
            RETURN QUERY SELECT NULL::bigint, NULL::bigint, v_current;
            RETURN;
        END IF;
        RETURN QUERY
        INSERT INTO {schema}.events AS e (stream_id, aggregate_type, version, event_name,
            event_version, payload, event_id, correlation_id, causation_id, created_at, meta)
        SELECT p_stream, p_type, v_current + t.ord, t.name, t.ver, t.payload, t.event_id,
               t.correlation, t.causation, t.created, t.meta
          FROM unnest(p_names, p_versions, p_payloads, p_event_ids, p_correlations,
                      p_causations, p_created, p_metas)
               WITH ORDINALITY AS t(name, ver, payload, event_id, correlation, causation,
                                    created, meta, ord)
         ORDER BY t.ord
        RETURNING e.position, e.version, NULL::bigint;
    EXCEPTION
        WHEN unique_violation THEN
            PERFORM pg_advisory_unlock({lock_key});
            SELECT coalesce(max(e.version), 0) INTO v_current
              FROM {schema}.events e WHERE e.stream_id = p_stream;
            RETURN QUERY SELECT NULL::bigint, NULL::bigint, v_current;
            RETURN;
        WHEN OTHERS THEN
            PERFORM pg_advisory_unlock({lock_key});
            RAISE;
    END;
    PERFORM pg_advisory_unlock({lock_key});
    PERFORM pg_notify('{channel}', '');
END
$fn$;
