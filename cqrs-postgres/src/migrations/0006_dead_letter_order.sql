-- Dead letters are listed page by page in (position, event_id) order: an index in that order
-- lets each page start where the last ended without scanning what came before.
CREATE INDEX IF NOT EXISTS dead_letters_order
    ON {schema}.dead_letters (projection, position, event_id);
