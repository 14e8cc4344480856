-- Phase backfill: fill amount_cents for the rows written before expand, by ranges of
-- 5000 ids, each range its own transaction, with a pause between them (rows written since
-- expand are filled by the trigger). PostgreSQL 11 or later: COMMIT inside DO needs it,
-- and psql must not wrap this file in a transaction (no --single-transaction).
--
-- This is the phase that loads the primary and the replicas: each range writes WAL the
-- replicas must replay, and holds row locks on its rows until it commits. batch_size and
-- pause set the pace. It may be run again: it fills only what is still NULL.
--
-- On rollback there is no down-migration: stopping it is the rollback. migrate.sh cancels
-- the statement (pg_cancel_backend on its application_name); the range in progress is
-- rolled back, the ranges committed keep amount_cents, which nothing reads yet. Find the
-- cause (replication lag: a smaller batch_size, a longer pause), then run the pipeline
-- again from this phase.
SET lock_timeout = '5s';

DO $$
DECLARE
  batch_size constant bigint := 5000;
  pause      constant float8 := 0.2;
  next_id    bigint;
  last_id    bigint;
BEGIN
  SELECT min(id), max(id) INTO next_id, last_id FROM orders;
  WHILE next_id <= last_id LOOP
    UPDATE orders
       SET amount_cents = round(amount * 100)
     WHERE id >= next_id AND id < next_id + batch_size
       AND amount_cents IS NULL AND amount IS NOT NULL;
    COMMIT;
    next_id := next_id + batch_size;
    PERFORM pg_sleep(pause);
  END LOOP;
END
$$;
