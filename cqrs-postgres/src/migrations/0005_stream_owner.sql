-- Streams are keyed by id alone, and an id belongs to the aggregate type that wrote it
-- (docs/adr/0007). Both append functions refuse an append of another aggregate type to an
-- existing stream with SQLSTATE CQ001 (the owner's type in DETAIL). The owner is read from the
-- stream's last event, found by the same index lookup that gives its version (plus that one
-- row); since this migration every event of a stream has the same type.

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
    v_owner text;
BEGIN
    -- The stream's last event gives its version and the aggregate type that owns it.
    SELECT e.version, e.aggregate_type INTO v_current, v_owner
      FROM {schema}.events e WHERE e.stream_id = p_stream
     ORDER BY e.version DESC LIMIT 1;
    v_current := coalesce(v_current, 0);
    IF v_owner IS NOT NULL AND v_owner <> p_type THEN
        RAISE EXCEPTION 'stream % belongs to aggregate type %', p_stream, v_owner
            USING ERRCODE = 'CQ001', DETAIL = v_owner;
    END IF;
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

-- As in 0004, with the owner check.
CREATE OR REPLACE FUNCTION {schema}.append_batch(
    p_streams text[],
    p_types text[],
    p_expected bigint[],
    p_check boolean[],
    p_requests integer[],
    p_names text[],
    p_versions integer[],
    p_payloads json[],
    p_event_ids uuid[],
    p_correlations uuid[],
    p_causations uuid[],
    p_created timestamptz[],
    p_metas json[]
) RETURNS TABLE (out_request integer, out_position bigint, out_version bigint, out_actual bigint)
LANGUAGE plpgsql AS $fn$
DECLARE
    v_xid bigint;
    v_base bigint;
    v_current bigint[];
    v_req integer[];
    v_pos bigint[];
    v_ver bigint[];
    v_foreign text;
BEGIN
    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        RAISE EXCEPTION 'append_batch must be the first write of its transaction'
            USING ERRCODE = '55000';
    END IF;
    IF cardinality(p_names) > 65536 THEN
        RAISE EXCEPTION 'more than 65536 events in one transaction' USING ERRCODE = '55000';
    END IF;
    IF (SELECT count(DISTINCT s) FROM unnest(p_streams) s) <> cardinality(p_streams) THEN
        RAISE EXCEPTION 'a stream appears twice in one group' USING ERRCODE = '55000';
    END IF;
    v_xid := pg_current_xact_id()::text::bigint;
    IF v_xid >= (1::bigint << 47) THEN
        RAISE EXCEPTION 'transaction id % is beyond the range positions can encode', v_xid
            USING ERRCODE = '55000';
    END IF;
    v_base := v_xid << 16;
    SELECT array_agg(coalesce(last.version, 0) ORDER BY r.i),
           min(CASE WHEN last.aggregate_type <> r.typ THEN r.stream END)
      INTO v_current, v_foreign
      FROM unnest(p_streams, p_types) WITH ORDINALITY AS r(stream, typ, i)
      LEFT JOIN LATERAL (SELECT e.version, e.aggregate_type FROM {schema}.events e
                          WHERE e.stream_id = r.stream
                          ORDER BY e.version DESC LIMIT 1) last ON true;
    -- A stream another aggregate type owns: the client appends one by one, and that
    -- append alone fails (in append_events) with the owner's type.
    IF v_foreign IS NOT NULL THEN
        RAISE EXCEPTION 'stream % belongs to another aggregate type', v_foreign
            USING ERRCODE = 'CQ001';
    END IF;
    WITH req AS (
        SELECT r.i::integer AS i, r.stream, r.typ, v_current[r.i] AS current
          FROM unnest(p_streams, p_types, p_expected, p_check)
               WITH ORDINALITY AS r(stream, typ, expected, chk, i)
         WHERE NOT r.chk OR v_current[r.i] = r.expected
    ), ev AS (
        SELECT t.*, row_number() OVER (PARTITION BY t.req ORDER BY t.k) AS ord
          FROM unnest(p_requests, p_names, p_versions, p_payloads, p_event_ids,
                      p_correlations, p_causations, p_created, p_metas)
               WITH ORDINALITY AS t(req, name, ver, payload, event_id, correlation, causation,
                                    created, meta, k)
    ), ins AS (
        INSERT INTO {schema}.events AS e (position, stream_id, aggregate_type, version,
            event_name, event_version, payload, event_id, correlation_id, causation_id,
            created_at, meta)
        SELECT v_base + ev.k - 1, req.stream, req.typ, req.current + ev.ord, ev.name, ev.ver,
               ev.payload, ev.event_id, ev.correlation, ev.causation, ev.created, ev.meta
          FROM ev JOIN req ON req.i = ev.req
        ON CONFLICT (stream_id, version) DO NOTHING
        RETURNING e.stream_id, e.position, e.version
    )
    SELECT array_agg(req.i ORDER BY ins.position), array_agg(ins.position ORDER BY ins.position),
           array_agg(ins.version ORDER BY ins.position)
      INTO v_req, v_pos, v_ver
      FROM ins JOIN req ON req.stream = ins.stream_id;
    IF EXISTS (SELECT 1
                 FROM (SELECT w, count(*) AS n FROM unnest(v_req) w GROUP BY w) written
                 JOIN (SELECT r, count(*) AS n FROM unnest(p_requests) r GROUP BY r) wanted
                   ON wanted.r = written.w
                WHERE written.n <> wanted.n) THEN
        RAISE EXCEPTION 'a stream was written concurrently in part' USING ERRCODE = '40001';
    END IF;
    RETURN QUERY
    SELECT w.i, w.p, w.v, NULL::bigint FROM unnest(v_req, v_pos, v_ver) AS w(i, p, v)
    UNION ALL
    -- Not written: the version did not match, or a concurrent append (now committed, and
    -- seen by this statement) took the versions.
    SELECT r.i::integer, NULL::bigint, NULL::bigint,
           CASE WHEN r.chk AND v_current[r.i] <> r.expected THEN v_current[r.i]
                ELSE (SELECT coalesce(max(e.version), 0) FROM {schema}.events e
                       WHERE e.stream_id = r.stream)
           END
      FROM unnest(p_streams, p_expected, p_check) WITH ORDINALITY AS r(stream, expected, chk, i)
      LEFT JOIN (SELECT DISTINCT w FROM unnest(v_req) w) written ON written.w = r.i
     WHERE written.w IS NULL;
END
$fn$;
