-- Payloads and metadata are kept as `json`, the text as the client wrote it: the store never
-- looks inside them, and reading `jsonb` re-serializes every row (0.45 s per million rows on
-- the benchmark machine, a quarter of a full replay). Appends no longer parse them into jsonb.
ALTER TABLE {schema}.events
    ALTER COLUMN payload TYPE json USING payload::json,
    ALTER COLUMN meta TYPE json USING meta::json;

DROP FUNCTION IF EXISTS {schema}.append_events(text, text, bigint, boolean, text[], integer[],
    jsonb[], uuid[], uuid[], uuid[], timestamptz[], jsonb[]);

-- As in 0001, with json parameters.
CREATE OR REPLACE FUNCTION {schema}.append_events(
    p_stream text,
    p_type text,
    p_expected bigint,
    p_check boolean,
    p_names text[],
    p_versions integer[],
    p_payloads json[],
    p_event_ids uuid[],
    p_correlations uuid[],
    p_causations uuid[],
    p_created timestamptz[],
    p_metas json[]
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
