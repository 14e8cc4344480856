-- Undo phase expand: drop the trigger, its function and orders.amount_cents.
-- Nothing reads amount_cents before the application is switched to it, so nothing is lost.
BEGIN;
SET LOCAL lock_timeout = '5s';

DROP TRIGGER IF EXISTS orders_amount_cents_sync ON orders;
DROP FUNCTION IF EXISTS orders_amount_cents_sync();
ALTER TABLE orders DROP COLUMN IF EXISTS amount_cents;

COMMIT;
