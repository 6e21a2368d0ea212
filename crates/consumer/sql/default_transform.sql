-- The default transform: what the original Spark job did, fixed.
--
-- `events` holds one micro-batch: the twelve event fields plus the Kafka columns
-- "topic", "partition", "offset", "timestamp" and "key", and the record's rank
-- "origin_partition", "origin_offset" (its position, or for a replayed dead letter
-- the original record's).
-- Rows without an id are dropped; one row per id survives, the latest by rank; dob and registered_date become UTC timestamps (timestamptz in
-- PostgreSQL); a value that does not parse becomes NULL instead of failing the batch.
--
-- "The latest per id" is `is_latest(key, rank, ...) OVER ()`, a window function
-- this pipeline registers: true on the one row per non-null key whose ranks are
-- the highest, compared left to right. It keeps the same rows as
-- `row_number() OVER (PARTITION BY id ORDER BY origin_partition DESC,
-- origin_offset DESC, "partition" DESC, "offset" DESC) = 1` with one hash per row
-- instead of a sort, and leaves the batch in its order, so a filter keeps the rows
-- (copying nothing when every id is new). The row's position in the topic
-- ("partition", "offset") breaks a tie of ranks (two replays of one dead letter):
-- the record at the highest position wins, the one `Provenance` names.
-- (Measured slower in issue 14: `row_number()` as above, a sort by id with
-- `lag(id)` joined back to the batch by position, and a hash aggregate
-- `first_value("offset" ORDER BY ...) GROUP BY id`.)
WITH ranked AS (
    SELECT *,
           is_latest(id, origin_partition, origin_offset, "partition", "offset") OVER () AS latest
    FROM events
)
SELECT id,
       first_name,
       last_name,
       gender,
       address,
       post_code,
       email,
       username,
       arrow_cast(try_cast(dob AS TIMESTAMP), 'Timestamp(Microsecond, Some("UTC"))') AS dob,
       arrow_cast(try_cast(registered_date AS TIMESTAMP), 'Timestamp(Microsecond, Some("UTC"))') AS registered_date,
       phone,
       picture
FROM ranked
WHERE latest
