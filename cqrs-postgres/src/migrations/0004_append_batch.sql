-- Group commit: appends to several streams in one transaction, each checked as
-- `append_events` checks it, so concurrent commands share one commit (one WAL flush, one round
-- trip). `p_requests` gives each event's append (from 1); an append's events keep their order.
-- Returns the written rows, and for each append that was not written one row with only
-- `out_actual` set: the stream's version, when it did not match, or when a concurrent
-- transaction wrote the same versions first (the unique (stream, version) index waits for it).
-- The other appends of the group are written all the same. An append written only in part
-- (a concurrent append of fewer events took some of its versions) fails the whole group with
-- SQLSTATE 40001, and the client then appends one by one.
--
-- Must be the first write of its transaction (the client calls it as a single statement), so
-- positions start at the transaction's first ordinal. Each stream appears at most once.
-- Set-based: a loop over the appends with array slices costs O(n^2) in the group's size.
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
    SELECT array_agg(coalesce((SELECT max(e.version) FROM {schema}.events e
                                WHERE e.stream_id = r.stream), 0) ORDER BY r.i)
      INTO v_current
      FROM unnest(p_streams) WITH ORDINALITY AS r(stream, i);
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

-- Binaries from before migration 0003 call `append_events` with `jsonb[]` payloads; 0003
-- replaced that function. This overload keeps them working during a rolling upgrade.
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
LANGUAGE sql AS $fn$
    SELECT * FROM {schema}.append_events(p_stream, p_type, p_expected, p_check, p_names,
        p_versions, p_payloads::json[], p_event_ids, p_correlations, p_causations, p_created,
        p_metas::json[]);
$fn$;
