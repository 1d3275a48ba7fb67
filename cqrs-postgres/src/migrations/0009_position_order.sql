-- Per stream, position order equals version order (docs/adr/0017). A position is made from
-- the transaction id, so an event's transaction must have a larger id than the transaction
-- that committed the stream's previous version. Two paths broke it:
-- - append_batch took its transaction id before it looked the streams' versions up: a
--   concurrent append with a larger id could commit version n in between, and this group then
--   wrote version n + 1 below it. The id is now taken after the lookup: every version the
--   lookup sees was committed by a transaction whose id was assigned before it, so a smaller id.
-- - append_events in a transaction that already had an id (an earlier append of a
--   `PgAppendTx`, or the caller's own writes) cannot take a new one: when the stream's last
--   event comes from a transaction with a larger id, it refuses with SQLSTATE CQ003 (the
--   stream's version in DETAIL), and the caller retries in a new transaction.
CREATE OR REPLACE FUNCTION {schema}.append_events(
    p_stream text,
    p_type text,
    p_expected bigint,
    p_check boolean,
    p_key text,
    p_names text[],
    p_versions integer[],
    p_payloads json[],
    p_event_ids uuid[],
    p_correlations uuid[],
    p_causations uuid[],
    p_created timestamptz[],
    p_metas json[]
) RETURNS TABLE (out_position bigint, out_version bigint, out_actual bigint, out_key text)
LANGUAGE plpgsql AS $fn$
DECLARE
    v_current bigint;
    v_last bigint;
    v_xid bigint;
    v_base bigint;
    v_fresh boolean;
    v_owner text;
    v_key text;
    v_inherit text;
BEGIN
    -- Whether this transaction already has an id, asked before anything here could give it one.
    v_fresh := pg_current_xact_id_if_assigned() IS NULL;
    -- The stream's last event gives its version, its position, its owner and its routing key.
    SELECT e.version, e.position, e.aggregate_type, e.meta->>'cqrs.routing_key'
      INTO v_current, v_last, v_owner, v_key
      FROM {schema}.events e WHERE e.stream_id = p_stream
     ORDER BY e.version DESC LIMIT 1;
    IF v_owner IS NOT NULL AND v_owner <> p_type THEN
        RAISE EXCEPTION 'stream % belongs to aggregate type %', p_stream, v_owner
            USING ERRCODE = 'CQ001', DETAIL = v_owner;
    END IF;
    IF v_owner IS NOT NULL AND p_key IS NOT NULL AND p_key IS DISTINCT FROM v_key THEN
        RAISE EXCEPTION 'stream % is routed by %, not %', p_stream,
            coalesce(v_key, p_stream), p_key
            USING ERRCODE = 'CQ002', DETAIL = coalesce(v_key, p_stream);
    END IF;
    v_current := coalesce(v_current, 0);
    IF p_check AND v_current <> p_expected THEN
        RETURN QUERY SELECT NULL::bigint, NULL::bigint, v_current, NULL::text;
        RETURN;
    END IF;
    v_inherit := CASE WHEN p_key IS NULL THEN v_key END;
    -- Taken after the lookup: larger than the id of every transaction whose rows it saw.
    v_xid := pg_current_xact_id()::text::bigint;
    IF v_xid >= (1::bigint << 47) THEN
        RAISE EXCEPTION 'transaction id % is beyond the range positions can encode', v_xid
            USING ERRCODE = '55000';
    END IF;
    v_base := v_xid << 16;
    IF NOT v_fresh THEN
        -- The id was taken earlier: a transaction that began later may have written the
        -- stream since, and this one's positions would come before its events.
        IF v_last IS NOT NULL AND (v_last >> 16) > v_xid THEN
            RAISE EXCEPTION 'stream % was written by a transaction that began after this one',
                p_stream USING ERRCODE = 'CQ003', DETAIL = v_current::text;
        END IF;
        -- Earlier writes of this transaction (an earlier append) may have taken ordinals.
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
           t.payload, t.event_id, t.correlation, t.causation, t.created,
           {schema}.with_routing_key(t.meta, v_inherit)
      FROM unnest(p_names, p_versions, p_payloads, p_event_ids, p_correlations,
                  p_causations, p_created, p_metas)
           WITH ORDINALITY AS t(name, ver, payload, event_id, correlation, causation,
                                created, meta, ord)
    RETURNING e.position, e.version, NULL::bigint, coalesce(p_key, v_key);
END
$fn$;

CREATE OR REPLACE FUNCTION {schema}.append_batch(
    p_streams text[],
    p_types text[],
    p_expected bigint[],
    p_check boolean[],
    p_keys text[],
    p_requests integer[],
    p_names text[],
    p_versions integer[],
    p_payloads json[],
    p_event_ids uuid[],
    p_correlations uuid[],
    p_causations uuid[],
    p_created timestamptz[],
    p_metas json[]
) RETURNS TABLE (out_request integer, out_position bigint, out_version bigint,
                 out_actual bigint, out_key text)
LANGUAGE plpgsql AS $fn$
DECLARE
    v_xid bigint;
    v_base bigint;
    v_current bigint[];
    v_keys text[];
    v_req integer[];
    v_pos bigint[];
    v_ver bigint[];
    v_foreign text;
    v_rerouted text;
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
    -- Each stream's version and the key its events carry: the append's, else the stream's.
    SELECT array_agg(coalesce(last.version, 0) ORDER BY r.i),
           array_agg(coalesce(r.key, last.key) ORDER BY r.i),
           min(CASE WHEN last.aggregate_type <> r.typ THEN r.stream END),
           min(CASE WHEN last.version IS NOT NULL AND r.key IS NOT NULL
                         AND r.key IS DISTINCT FROM last.key THEN r.stream END)
      INTO v_current, v_keys, v_foreign, v_rerouted
      FROM unnest(p_streams, p_types, p_keys) WITH ORDINALITY AS r(stream, typ, key, i)
      LEFT JOIN LATERAL (SELECT e.version, e.aggregate_type,
                                e.meta->>'cqrs.routing_key' AS key
                           FROM {schema}.events e
                          WHERE e.stream_id = r.stream
                          ORDER BY e.version DESC LIMIT 1) last ON true;
    -- A stream another aggregate type owns: the client appends one by one, and that
    -- append alone fails (in append_events) with the owner's type.
    IF v_foreign IS NOT NULL THEN
        RAISE EXCEPTION 'stream % belongs to another aggregate type', v_foreign
            USING ERRCODE = 'CQ001';
    END IF;
    IF v_rerouted IS NOT NULL THEN
        RAISE EXCEPTION 'stream % is routed by another key', v_rerouted
            USING ERRCODE = 'CQ002';
    END IF;
    -- Taken after the lookup: larger than the id of every transaction whose rows it saw, so
    -- each stream's new versions get positions above its earlier ones.
    v_xid := pg_current_xact_id()::text::bigint;
    IF v_xid >= (1::bigint << 47) THEN
        RAISE EXCEPTION 'transaction id % is beyond the range positions can encode', v_xid
            USING ERRCODE = '55000';
    END IF;
    v_base := v_xid << 16;
    WITH req AS (
        SELECT r.i::integer AS i, r.stream, r.typ, v_current[r.i] AS current,
               CASE WHEN r.key IS NULL THEN v_keys[r.i] END AS inherit
          FROM unnest(p_streams, p_types, p_expected, p_check, p_keys)
               WITH ORDINALITY AS r(stream, typ, expected, chk, key, i)
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
               ev.payload, ev.event_id, ev.correlation, ev.causation, ev.created,
               {schema}.with_routing_key(ev.meta, req.inherit)
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
    SELECT w.i, w.p, w.v, NULL::bigint, v_keys[w.i] FROM unnest(v_req, v_pos, v_ver) AS w(i, p, v)
    UNION ALL
    -- Not written: the version did not match, or a concurrent append (now committed, and
    -- seen by this statement) took the versions.
    SELECT r.i::integer, NULL::bigint, NULL::bigint,
           CASE WHEN r.chk AND v_current[r.i] <> r.expected THEN v_current[r.i]
                ELSE (SELECT coalesce(max(e.version), 0) FROM {schema}.events e
                       WHERE e.stream_id = r.stream)
           END,
           NULL::text
      FROM unnest(p_streams, p_expected, p_check) WITH ORDINALITY AS r(stream, expected, chk, i)
      LEFT JOIN (SELECT DISTINCT w FROM unnest(v_req) w) written ON written.w = r.i
     WHERE written.w IS NULL;
END
$fn$;

-- The functions of 0005, for a binary from before this migration during a rolling upgrade:
-- its appends name no key, so they inherit the stream's.
CREATE OR REPLACE FUNCTION {schema}.append_events(
    p_stream text, p_type text, p_expected bigint, p_check boolean, p_names text[],
    p_versions integer[], p_payloads json[], p_event_ids uuid[], p_correlations uuid[],
    p_causations uuid[], p_created timestamptz[], p_metas json[]
) RETURNS TABLE (out_position bigint, out_version bigint, out_actual bigint)
LANGUAGE sql AS $fn$
    SELECT a.out_position, a.out_version, a.out_actual
      FROM {schema}.append_events(p_stream, p_type, p_expected, p_check, NULL::text, p_names,
               p_versions, p_payloads, p_event_ids, p_correlations, p_causations, p_created,
               p_metas) a
$fn$;
