//! Secured deployments, against real services: TLS to PostgreSQL as libpq decides
//! it, TLS to Kafka through a TLS-terminating proxy (stunnel in front of the local
//! broker), SASL up to the handshake (the local broker has none), every compression
//! codec, and secrets that never show.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use events::Generator;
use support::services::{PrivateBroker, PrivatePostgres, TlsProxy, make_certs};
use support::{Scenario, run_bounded, text};

/// Runs `command` expecting a failure within `limit`; returns its stderr and the
/// last line, after checking it is one line with the program's prefix, no panic.
fn refused_within(command: Command, limit: Duration) -> (String, String) {
    let started = Instant::now();
    let out = run_bounded(command, limit + Duration::from_secs(30));
    let took = started.elapsed();
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "should fail: {stderr}");
    assert!(took < limit, "took {took:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default().to_string();
    assert!(last.contains(": error: "), "{stderr}");
    support::report(&format!(
        "secured: refused seconds={:.1} error={last:?}",
        took.as_secs_f64()
    ));
    (stderr, last)
}

/// A CA with a certificate for `localhost`, and another CA (that did not sign it).
fn two_cas() -> (tempfile::TempDir, tempfile::TempDir) {
    let (certs, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    make_certs(certs.path(), &["localhost"]);
    make_certs(other.path(), &["localhost"]);
    (certs, other)
}

/// The producer binary publishing `count` events of the synthetic source's `seed`.
fn producer(brokers: &str, topic: &str, count: u64, seed: u64) -> Command {
    let mut c = Command::new(support::services::producer_bin());
    c.args(["--brokers", brokers, "--topic", topic, "--progress", "log"])
        .args(["--count", &count.to_string(), "--seed", &seed.to_string()]);
    c
}

/// A scenario whose database lives on `pg` (reached by the test over its Unix
/// socket) and that the consumer reaches with `url_of(database)`.
async fn scenario_on_tls_postgres(
    pg: &PrivatePostgres,
    url_of: impl Fn(&str) -> String,
) -> (Scenario, String) {
    let admin = testkit::connect(&pg.socket_url("postgres")).await;
    let name = testkit::unique("tls");
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let brokers = testkit::brokers();
    let topic = testkit::unique("users");
    testkit::create_topic_on(&brokers, &topic, 1).await;
    let s = Scenario {
        brokers,
        topic,
        group: testkit::unique("group"),
        db_url: url_of(&name),
        db: testkit::connect(&pg.socket_url(&name)).await,
        out: tempfile::tempdir().unwrap(),
    };
    (s, name)
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_over_tls_checks_the_ca_and_the_host_name_as_libpq_does() {
    let (certs, other) = two_cas();
    let pg = PrivatePostgres::start_with_tls(certs.path());
    let ca = certs.path().join("ca.pem");
    let url = |host: &str, db: &str, query: &str| {
        format!("postgres://postgres@{host}:{}/{db}?{query}", pg.port)
    };

    // verify-full: the chain and the host name check out, rows are written over TLS
    // (the server accepts TCP connections only over TLS).
    let verify_full = format!("sslmode=verify-full&sslrootcert={}", ca.display());
    let (s, database) =
        scenario_on_tls_postgres(&pg, |db| url("localhost", db, &verify_full)).await;
    let events: Vec<_> = Generator::new(161).take(50).collect();
    s.publish(&events).await;
    let out = s.run_available_now(&[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    s.assert_exactly_once(&events, 0).await;

    // A certificate from another CA.
    let wrong_ca = url(
        "localhost",
        &database,
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            other.path().join("ca.pem").display()
        ),
    );
    let mut c = s.command(&["--database-url", &wrong_ca, "status"]);
    c.env_remove("DATABASE_URL");
    let (_, line) = refused_within(c, Duration::from_secs(15));
    assert!(
        line.contains("not signed by a CA in sslrootcert=")
            && line.contains(other.path().join("ca.pem").to_str().unwrap()),
        "{line}"
    );
    // The right CA, but connected by a name the certificate does not list.
    let wrong_host = url("127.0.0.1", &database, &verify_full);
    let (_, line) = refused_within(
        s.command(&["--database-url", &wrong_host, "status"]),
        Duration::from_secs(15),
    );
    assert!(line.contains("not for host \"127.0.0.1\""), "{line}");
    // verify-ca checks the chain only, so the same address is accepted; `require`
    // encrypts; `disable` is refused by a server that only takes TLS.
    for ok in [
        url(
            "127.0.0.1",
            &database,
            &format!("sslmode=verify-ca&sslrootcert={}", ca.display()),
        ),
        url("127.0.0.1", &database, "sslmode=require"),
    ] {
        let out = run_bounded(
            s.command(&["--database-url", &ok, "status"]),
            Duration::from_secs(30),
        );
        assert!(out.status.success(), "{ok}: {}", text(&out.stderr));
    }
    let (_, line) = refused_within(
        s.command(&[
            "--database-url",
            &url("127.0.0.1", &database, "sslmode=disable"),
            "status",
        ]),
        Duration::from_secs(15),
    );
    assert!(
        line.contains("no encryption") || line.contains("SSL off"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_over_tls_through_a_proxy_is_read_exactly_and_a_wrong_ca_is_refused() {
    let (certs, other) = two_cas();
    let proxy_port = testkit::free_port();
    let broker =
        PrivateBroker::start_advertising(testkit::free_port(), &format!("localhost:{proxy_port}"));
    let _proxy = TlsProxy::start(proxy_port, broker.port, certs.path());
    let brokers = format!("localhost:{proxy_port}");
    let ca = certs.path().join("ca.pem");
    let tls = [
        "--kafka-security-protocol",
        "ssl",
        "--kafka-ca-file",
        ca.to_str().unwrap(),
    ];

    // The producer creates the topic and publishes over TLS.
    let topic = testkit::unique("users");
    let mut producer = producer(&brokers, &topic, 300, 162);
    producer.args(["--partitions", "2"]).args(tls);
    let out = run_bounded(producer, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "producer over TLS: {}",
        text(&out.stderr)
    );

    let s = Scenario::without_topic(&brokers, &topic).await;
    let mut args = vec!["--available-now"];
    args.extend_from_slice(&tls);
    let out = run_bounded(s.command(&args), Duration::from_secs(120));
    assert!(
        out.status.success(),
        "consumer over TLS: {}",
        text(&out.stderr)
    );
    let events: Vec<_> = Generator::new(162).take(300).collect();
    s.assert_exactly_once(&events, 0).await;
    assert_eq!(
        s.count("SELECT sum(records)::bigint FROM pipeline_batches")
            .await,
        300
    );

    // A CA that did not sign the proxy's certificate: refused at start-up, saying so.
    let wrong = other.path().join("ca.pem");
    let (_, line) = refused_within(
        s.command(&[
            "--kafka-security-protocol",
            "ssl",
            "--kafka-ca-file",
            wrong.to_str().unwrap(),
            "--available-now",
        ]),
        Duration::from_secs(20),
    );
    assert!(line.contains("certificate verify failed"), "{line}");
    // Plaintext against the TLS port: refused too, within the connect timeout.
    let (_, line) = refused_within(s.command(&["--available-now"]), Duration::from_secs(20));
    assert!(line.contains("cannot reach Kafka brokers"), "{line}");
}

/// SASL/SCRAM against a broker that requires it. A wrong password ends start-up
/// with the broker's refusal, in bounded time, without printing the password. The
/// right one logs in: the producer's start-up check and topic creation are answered
/// only after the SCRAM exchange. (tansu 0.6 then refuses some later sessions of the
/// same user with `invalid-proof`, measured: the producer's publishing connections;
/// so what the producer delivered is whatever got through.) The consumer, logged in,
/// must read exactly what was delivered, or, if the broker refuses its session
/// mid-run, stop with one line (an error that waiting cannot heal), never retry
/// forever.
#[tokio::test(flavor = "multi_thread")]
async fn sasl_scram_logs_in_a_wrong_password_is_refused_and_a_refused_session_stops_the_consumer() {
    let password = "pw-never-shown-7c1";
    let broker = PrivateBroker::start_with_scram_user("app", password);
    let s = Scenario::without_topic(&broker.brokers(), &testkit::unique("users")).await;
    let sasl = [
        "--kafka-security-protocol",
        "sasl_plaintext",
        "--kafka-sasl-mechanism",
        "SCRAM-SHA-512",
        "--kafka-sasl-username",
        "app",
    ];
    let with_password = |mut c: Command, pw: &str| {
        c.env("KAFKA_SASL_PASSWORD", pw);
        c
    };
    let mut args = sasl.to_vec();
    args.push("--available-now");
    let (stderr, line) = refused_within(
        with_password(s.command(&args), "wrong-password"),
        Duration::from_secs(20),
    );
    assert!(
        line.contains("cannot reach Kafka brokers")
            && line.contains("SASL SCRAM authentication failed"),
        "{line}"
    );
    assert!(!stderr.contains("wrong-password"), "{stderr}");

    // The right password: the producer logs in and creates the topic.
    let mut producer = producer(&s.brokers, &s.topic, 50, 165);
    producer.args(["--delivery-timeout", "15s"]).args(sasl);
    let out = run_bounded(with_password(producer, password), Duration::from_secs(60));
    let produced = text(&out.stderr);
    assert!(produced.contains("Created topic"), "{produced}");
    assert!(!produced.contains(password), "{produced}");
    let delivered: usize = text(&out.stdout)
        .split_whitespace()
        .find_map(|w| w.strip_prefix("delivered=")?.parse().ok())
        .unwrap_or(0);

    let started = Instant::now();
    let out = run_bounded(
        with_password(s.command(&args), password),
        Duration::from_secs(120),
    );
    let took = started.elapsed();
    let stderr = text(&out.stderr);
    assert!(
        !stderr.contains(password) && !stderr.contains("panicked"),
        "{stderr}"
    );
    if out.status.success() {
        // Logged in for the whole run: exactly what was delivered is read.
        let read = s
            .try_count("SELECT coalesce(sum(records), 0)::bigint FROM pipeline_batches")
            .await
            .unwrap_or(0);
        assert_eq!(read as usize, delivered, "{stderr}");
        if delivered == 50 {
            let events: Vec<_> = Generator::new(165).take(50).collect();
            s.assert_exactly_once(&events, 0).await;
        }
    } else {
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("consumer: error: Kafka: cannot go on reading")
                && last.contains("Authentication"),
            "{stderr}"
        );
        assert!(took < Duration::from_secs(30), "took {took:?}");
        assert_eq!(
            s.try_count("SELECT count(*) FROM users").await.unwrap_or(0),
            0
        );
    }
    support::report(&format!(
        "secured: sasl-scram wrong_password=refused right_password=logged_in delivered={delivered} consumer={} seconds={:.1}",
        if out.status.success() {
            "read_exactly"
        } else {
            "refused_mid_run_stopped"
        },
        took.as_secs_f64()
    ));

    // A setting that cannot work is refused before any connection, with the fix.
    let (_, line) = refused_within(
        s.command(&["--kafka-security-protocol", "sasl_ssl"]),
        Duration::from_secs(5),
    );
    assert!(line.contains("needs --kafka-sasl-mechanism"), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn passwords_in_the_database_url_never_show() {
    let s = Scenario::new(1).await;
    let password = "db-secret-never-shown-9f2";
    let url = format!("postgres://postgres:{password}@127.0.0.1:1/userdb");
    let mut c = s.command(&["--database-url", &url]);
    c.env_remove("DATABASE_URL");
    let (stderr, line) = refused_within(c, Duration::from_secs(15));
    assert!(line.contains("postgres@127.0.0.1:1/userdb"), "{line}");
    assert!(!stderr.contains(password), "{stderr}");
    // --help shows the env var's name, never its value.
    let out = Command::new(env!("CARGO_BIN_EXE_consumer"))
        .arg("--help")
        .env("DATABASE_URL", &url)
        .env("KAFKA_SASL_PASSWORD", password)
        .output()
        .unwrap();
    let help = text(&out.stdout);
    assert!(
        help.contains("DATABASE_URL") && help.contains("KAFKA_SASL_PASSWORD"),
        "{help}"
    );
    assert!(!help.contains(password), "{help}");
}

/// Events published with `codec` by the producer binary and by a second client
/// (librdkafka configured directly) are read exactly once each.
async fn codec_round_trip(codec: &str) -> Result<u64, String> {
    let s = Scenario::new(2).await;
    let mut producer = producer(&s.brokers, &s.topic, 200, 163);
    producer.args(["--compression", codec]);
    let out = run_bounded(producer, Duration::from_secs(60));
    if !out.status.success() {
        return Err(text(&out.stderr)
            .lines()
            .last()
            .unwrap_or_default()
            .to_string());
    }
    let second: Vec<_> = Generator::new(164).take(100).collect();
    let records: Vec<testkit::Record> = second
        .iter()
        .map(|e| (e.key().map(<[u8]>::to_vec), Some(e.to_json())))
        .collect();
    testkit::produce_compressed(&s.brokers, &s.topic, &records, None, codec).await;
    let out = s.run_available_now(&[]);
    assert!(out.status.success(), "{codec}: {}", text(&out.stderr));
    let mut all: Vec<_> = Generator::new(163).take(200).collect();
    all.extend(second);
    s.assert_exactly_once(&all, 0).await;
    let records = s
        .count("SELECT sum(records)::bigint FROM pipeline_batches")
        .await;
    assert_eq!(records, 300, "{codec}: each message read once");
    Ok(records as u64)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_compression_codec_is_read_exactly() {
    let mut line = String::from("secured: codecs");
    for codec in ["none", "gzip", "lz4", "zstd"] {
        let records = codec_round_trip(codec)
            .await
            .unwrap_or_else(|e| panic!("{codec}: {e}"));
        line.push_str(&format!(" {codec}={records}"));
    }
    support::report(&line);
}

#[test]
fn the_client_is_built_with_every_codec_and_tls() {
    // librdkafka refuses a setting it was built without ("not available at build
    // time"), so creating the clients is the check.
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("compression.codec", "zstd")
        .set("security.protocol", "sasl_ssl")
        .set("sasl.mechanism", "SCRAM-SHA-512")
        .set("sasl.username", "u")
        .set("sasl.password", "p")
        .create()
        .expect("zstd, TLS and SCRAM are built in");
    drop(consumer);
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let made: Result<rdkafka::producer::BaseProducer, _> = rdkafka::ClientConfig::new()
            .set("compression.codec", codec)
            .create();
        assert!(made.is_ok(), "{codec}: {:?}", made.err());
    }
}

/// librdkafka's own mock broker (a Kafka-protocol server on loopback inside this
/// test process) where tansu cannot serve a case: it stores snappy batches but drops
/// the connection when they are fetched.
fn mock_cluster()
-> rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    rdkafka::mocking::MockCluster::new(1).expect("librdkafka's mock cluster")
}

/// A scenario on the mock broker's topic (PostgreSQL is the real one).
async fn scenario_on_mock(
    mock: &rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
) -> Scenario {
    let topic = testkit::unique("users");
    mock.create_topic(&topic, 1, 1).unwrap();
    Scenario::without_topic(&mock.bootstrap_servers(), &topic).await
}

#[tokio::test(flavor = "multi_thread")]
async fn snappy_batches_are_read_exactly_at_the_client_level() {
    let mock = mock_cluster();
    let s = scenario_on_mock(&mock).await;
    let events: Vec<_> = Generator::new(166).take(200).collect();
    let records: Vec<testkit::Record> = events
        .iter()
        .map(|e| (e.key().map(<[u8]>::to_vec), Some(e.to_json())))
        .collect();
    testkit::produce_compressed(&s.brokers, &s.topic, &records, None, "snappy").await;
    let out = s.run_available_now(&[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    s.assert_exactly_once(&events, 0).await;
    assert_eq!(
        s.count("SELECT sum(records)::bigint FROM pipeline_batches")
            .await,
        200
    );
    support::report("secured: codec snappy (librdkafka mock broker) records=200");
}

/// An authorization the cluster withdraws mid-run (an ACL removed) cannot heal by
/// waiting: the consumer stops with one line in bounded time, having committed
/// everything before it, instead of logging a warning forever.
#[tokio::test(flavor = "multi_thread")]
async fn an_authorization_failure_mid_run_stops_the_consumer_in_bounded_time() {
    let mock = mock_cluster();
    let s = scenario_on_mock(&mock).await;
    let events: Vec<_> = Generator::new(167).take(100).collect();
    s.publish(&events).await;
    let mut child = s.spawn(&[], "consumer");
    let deadline = Instant::now() + Duration::from_secs(60);
    let ids = support::latest_by_id(&events).len() as i64;
    while s.try_count("SELECT count(*) FROM users").await.unwrap_or(0) < ids {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the first rows were not written:\n{}", s.log("consumer"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every fetch from now on is refused (the mock answers the next 500 with it).
    mock.request_errors(
        rdkafka::types::RDKafkaApiKey::Fetch,
        &[rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 500],
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            panic!(
                "still running 90 s after the authorization was withdrawn:\n{}",
                s.log("consumer")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let log = s.log("consumer");
    let last = log.lines().last().unwrap_or_default();
    assert!(!status.success(), "{log}");
    assert!(
        last.starts_with("consumer: error: Kafka: cannot go on reading")
            && last.to_lowercase().contains("authoriz"),
        "{log}"
    );
    s.assert_exactly_once(&events, 0).await;
    support::report(&format!(
        "secured: authorization-withdrawn stopped_after_s={:.1} error={last:?}",
        started.elapsed().as_secs_f64()
    ));
}
