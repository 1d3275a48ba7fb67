-- Read models: view documents, their checkpoints and dead letters, committed together.
CREATE TABLE IF NOT EXISTS {schema}.views (
    projection      text NOT NULL,
    id              text NOT NULL,
    view            jsonb,
    applied         jsonb NOT NULL,
    position        bigint NOT NULL,
    revision        bigint NOT NULL,
    PRIMARY KEY (projection, id)
);

CREATE TABLE IF NOT EXISTS {schema}.view_checkpoints (
    projection      text PRIMARY KEY,
    position        bigint NOT NULL
);

CREATE TABLE IF NOT EXISTS {schema}.dead_letters (
    projection      text NOT NULL,
    event_id        uuid NOT NULL,
    position        bigint NOT NULL,
    envelope        jsonb NOT NULL,
    reason          text NOT NULL,
    at              timestamptz NOT NULL,
    PRIMARY KEY (projection, event_id)
);
