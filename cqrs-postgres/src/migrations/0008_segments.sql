-- Segments of projections run by several instances: each segment's claim (the token that
-- fences its commits, the lease) and checkpoint, and the live members of each group.
CREATE TABLE IF NOT EXISTS {schema}.segment_claims (
    projection      text NOT NULL,
    segment         integer NOT NULL,
    segments        integer NOT NULL,
    owner           uuid,
    token           uuid,
    lease_until     timestamptz NOT NULL,
    position        bigint,
    PRIMARY KEY (projection, segment)
);

CREATE TABLE IF NOT EXISTS {schema}.segment_members (
    projection      text NOT NULL,
    owner           uuid NOT NULL,
    lease_until     timestamptz NOT NULL,
    PRIMARY KEY (projection, owner)
);
