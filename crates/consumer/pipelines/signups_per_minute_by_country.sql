-- Sign-ups per minute and country, for the merge output of users_and_signups.toml.
--
-- The minute is the Kafka record's timestamp (when the sign-up event was published)
-- truncated to the minute, UTC; the country is the address's last comma-separated
-- part ("5350 Cherry St, Riverside, Maine, United States" -> "United States"),
-- "unknown" when there is none. Records without an id are not sign-ups.
-- Each batch yields one row per (country, minute) it saw: its partial count, and
-- the birth dates of the oldest and the youngest user (combined by min and max).
-- A record's timestamp never changes, so a record read again (after a crash) lands
-- in the same group, and a late one in its own, old minute.
SELECT coalesce(nullif(trim(regexp_replace(address, '^.*,', '')), ''), 'unknown') AS country,
       arrow_cast(date_trunc('minute', "timestamp"), 'Timestamp(Microsecond, Some("UTC"))') AS minute,
       count(*) AS signups,
       arrow_cast(min(try_cast(dob AS TIMESTAMP)), 'Timestamp(Microsecond, Some("UTC"))') AS oldest_born,
       arrow_cast(max(try_cast(dob AS TIMESTAMP)), 'Timestamp(Microsecond, Some("UTC"))') AS youngest_born
FROM events
WHERE id IS NOT NULL AND "timestamp" IS NOT NULL
GROUP BY 1, 2
