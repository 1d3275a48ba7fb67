-- Events dead-lettered from a view, by id, kept in the view's row: a redelivery skips them and
-- only a retry of their dead letter applies them, in the same write that takes them out
-- (issue: a retry applied an event a redelivery had applied already).
ALTER TABLE {schema}.views ADD COLUMN IF NOT EXISTS parked jsonb NOT NULL DEFAULT '[]';
-- The view a dead letter is parked in (NULL: none could be had of its event).
ALTER TABLE {schema}.dead_letters ADD COLUMN IF NOT EXISTS view_id text;
