#!/usr/bin/env python3
"""The benchmark's "what a user would write instead" row (issue 14).

A plain Python consumer of `users_created`, written as a competent Python engineer
would write it without a framework: confluent-kafka (librdkafka, like our consumer)
in micro-batches of 10,000, `json.loads`, the last event per id kept in a dict,
psycopg2 `COPY` of the batch into a temporary table and one
`INSERT ... ON CONFLICT (id) DO UPDATE` into the table, the same rows written as a
CSV file per batch, and the offsets committed to Kafka after each batch.

It has none of the consumer's guarantees (no dead letters: a bad payload stops it;
offsets in Kafka, so a crash between COMMIT and the offset commit writes a batch
twice; no ordering guard across batches): it is the baseline, not a rival design.

    python_consumer.py --brokers H:P --topic T --group G --database-url URL \
        --table python_users --output-dir DIR --expected N

Stops once `--expected` records were read and written, and prints
`records=N rows=M seconds=S` on stdout.
"""

import argparse
import csv
import io
import json
import os
import sys
import time
import uuid

import psycopg2
from confluent_kafka import Consumer, KafkaError

FIELDS = [
    "id", "first_name", "last_name", "gender", "address", "post_code", "email",
    "username", "dob", "registered_date", "phone", "picture",
]
TIMESTAMPS = {"dob", "registered_date"}


def ddl(table):
    cols = ", ".join(
        f"{f} {'timestamptz' if f in TIMESTAMPS else 'text'}"
        + (" PRIMARY KEY" if f == "id" else "")
        for f in FIELDS
    )
    return f"CREATE TABLE IF NOT EXISTS {table} ({cols})"


def upsert(table):
    cols = ", ".join(FIELDS)
    sets = ", ".join(f"{f} = EXCLUDED.{f}" for f in FIELDS if f != "id")
    return (
        f"INSERT INTO {table} ({cols}) SELECT {cols} FROM batch_stage "
        f"ON CONFLICT (id) DO UPDATE SET {sets}"
    )


def write_batch(conn, table, out_dir, rows):
    """One batch: COPY into the stage, upsert, commit; the CSV part file beside it."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerows(rows)
    text = buf.getvalue()
    with conn.cursor() as cur:
        cur.execute("TRUNCATE batch_stage")
        cur.copy_expert("COPY batch_stage FROM STDIN WITH (FORMAT csv)", io.StringIO(text))
        cur.execute(upsert(table))
    conn.commit()
    name = os.path.join(out_dir, f"part-{uuid.uuid4()}.csv")
    with open(name, "w", newline="") as f:
        f.write(",".join(FIELDS) + "\n")
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--brokers", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--database-url", required=True)
    p.add_argument("--table", default="python_users")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--batch", type=int, default=10_000)
    p.add_argument("--expected", type=int, required=True)
    args = p.parse_args()

    os.makedirs(args.output_dir, exist_ok=True)
    conn = psycopg2.connect(args.database_url)
    with conn.cursor() as cur:
        cur.execute(ddl(args.table))
        cur.execute(
            f"CREATE TEMP TABLE batch_stage (LIKE {args.table} INCLUDING DEFAULTS)"
        )
    conn.commit()

    consumer = Consumer({
        "bootstrap.servers": args.brokers,
        "group.id": args.group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "queued.max.messages.kbytes": 65536,
    })
    consumer.subscribe([args.topic])
    started = time.monotonic()
    records = rows_written = 0
    while records < args.expected:
        messages = consumer.consume(num_messages=args.batch, timeout=1.0)
        if not messages:
            if time.monotonic() - started > 600:
                sys.exit(f"python_consumer: read {records} of {args.expected} in 600 s")
            continue
        latest = {}
        for m in messages:
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    continue
                sys.exit(f"python_consumer: {m.error()}")
            records += 1
            event = json.loads(m.value())
            if event.get("id") is None:
                continue
            latest[event["id"]] = [event.get(f) for f in FIELDS]
        if latest:
            write_batch(conn, args.table, args.output_dir, latest.values())
            rows_written += len(latest)
        consumer.commit(asynchronous=False)
    seconds = time.monotonic() - started
    consumer.close()
    conn.close()
    print(f"records={records} rows={rows_written} seconds={seconds:.3f}")


if __name__ == "__main__":
    main()
