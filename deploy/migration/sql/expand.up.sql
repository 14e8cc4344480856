-- Phase expand: add orders.amount_cents (bigint, cents) beside orders.amount
-- (numeric(12,2)), and a trigger that fills it whenever amount is written.
-- PostgreSQL 11 or later.
--
-- Nothing reads amount_cents yet. Adding a nullable column without a default changes only
-- the catalog; the ACCESS EXCLUSIVE lock it needs is held for milliseconds, unless it has
-- to queue behind a long transaction, and then every query on orders queues behind it:
-- lock_timeout makes it fail instead. One transaction: all of it or nothing.
--
-- On rollback: expand.down.sql (drops the trigger, the function and the column).
BEGIN;
SET LOCAL lock_timeout = '5s';

ALTER TABLE orders ADD COLUMN IF NOT EXISTS amount_cents bigint;

CREATE OR REPLACE FUNCTION orders_amount_cents_sync() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.amount IS NOT NULL THEN
    NEW.amount_cents := round(NEW.amount * 100);
  END IF;
  RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS orders_amount_cents_sync ON orders;
CREATE TRIGGER orders_amount_cents_sync
  BEFORE INSERT OR UPDATE OF amount ON orders
  FOR EACH ROW EXECUTE FUNCTION orders_amount_cents_sync();

COMMIT;
