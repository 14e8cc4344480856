-- Phase contract: drop the trigger, its function and the old column orders.amount.
-- Run it only once the application reads and writes amount_cents alone (migrate.sh
-- --to backfill, ship the application, then migrate.sh --from contract). Dropping a
-- column changes only the catalog, under a brief ACCESS EXCLUSIVE lock (lock_timeout
-- as in expand). One transaction: all of it or nothing.
--
-- On rollback there is no down-migration: the values of amount are gone with it. What
-- coalmine sees after a contract is mostly queries that still name amount failing
-- (critical error ratio). The manual action, decided by a person:
--   - the client still using amount is found in the failing queries (the database log:
--     "column amount does not exist") and fixed or rolled back; or
--   - the column is restored and refilled from amount_cents (amount = amount_cents / 100.0:
--     the values are derivable here), itself a backfill to run with care.
BEGIN;
SET LOCAL lock_timeout = '5s';

DROP TRIGGER IF EXISTS orders_amount_cents_sync ON orders;
DROP FUNCTION IF EXISTS orders_amount_cents_sync();
ALTER TABLE orders DROP COLUMN IF EXISTS amount;

COMMIT;
