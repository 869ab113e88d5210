-- A Kazaya callback names one of our payment attempts (sent as its order id). The orders model
-- now answers which session asked for it, every attempt and not only the latest, so the API no
-- longer reads the events table by JSON path.
ALTER TABLE orders ADD COLUMN payment_ids uuid[] NOT NULL DEFAULT '{}';

-- Rows projected before the column existed: filled from the log in the order the attempts were
-- made, which is what the projection's fold gives (it skips an id already present, so events
-- past its checkpoint are not added twice).
UPDATE orders o
   SET payment_ids = p.ids
  FROM (SELECT aggregate_id::uuid AS session_id,
               array_agg((payload #>> '{PaymentRequested,payment_id}')::uuid ORDER BY sequence) AS ids
          FROM events
         WHERE aggregate_type = 'shopping_session' AND event_type = 'PaymentRequested'
         GROUP BY aggregate_id) p
 WHERE o.session_id = p.session_id;

CREATE INDEX orders_by_payment ON orders USING gin (payment_ids);

-- Nothing reads PaymentRequested payloads by path any more; every append paid for this index.
DROP INDEX events_payment_requested;
