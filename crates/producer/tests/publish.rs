//! The real `producer` binary against the real broker.

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use events::Generator;
use rdkafka::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn producer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_producer"))
        .args(args)
        .env_remove("KAFKA_BROKERS")
        .env_remove("KAFKA_TOPIC")
        .output()
        .expect("run producer")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn publishes_every_event_and_reads_them_back() {
    let topic = testkit::unique("produce");
    let brokers = testkit::brokers();
    let out = producer(&[
        "--brokers",
        &brokers,
        "--topic",
        &topic,
        "--partitions",
        "3",
        "--count",
        "3000",
        "--seed",
        "9",
    ]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains("sent=3000 delivered=3000 failed=0"),
        "{stdout}"
    );
    assert!(stdout.contains("events/s"), "{stdout}");

    let messages = tokio::task::spawn_blocking(move || {
        testkit::consume(&topic, 3000, Duration::from_secs(60))
    })
    .await
    .unwrap();
    assert_eq!(messages.len(), 3000, "no duplicates");
    let mut expected: HashMap<Vec<u8>, usize> = HashMap::new();
    for e in Generator::new(9).take(3000) {
        *expected.entry(e.to_json()).or_default() += 1;
    }
    let mut got: HashMap<Vec<u8>, usize> = HashMap::new();
    for m in &messages {
        let payload = m.payload().unwrap().to_vec();
        let event: events::UserEvent = serde_json::from_slice(&payload).unwrap();
        assert_eq!(m.key(), event.key(), "the key is the id");
        *got.entry(payload).or_default() += 1;
    }
    assert_eq!(got, expected);
    let partitions: std::collections::HashSet<i32> =
        messages.iter().map(|m| m.partition()).collect();
    assert_eq!(partitions.len(), 3, "keys spread over the partitions");
}

#[test]
fn unreachable_broker_fails_fast_naming_the_brokers() {
    let started = Instant::now();
    let out = producer(&[
        "--brokers",
        "127.0.0.1:1",
        "--connect-timeout",
        "2s",
        "--count",
        "10",
    ]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("producer: error: cannot reach Kafka brokers at 127.0.0.1:1"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_bad_flag_is_a_one_line_error() {
    let out = producer(&["--rate", "fast"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("invalid value 'fast' for '--rate"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn file_replay_counts_bad_lines_and_publishes_the_rest() {
    let topic = testkit::unique("replay");
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let mut g = Generator::new(3);
    let events: Vec<_> = (0..3).map(|_| g.next_event()).collect();
    writeln!(file, "{}", text(&events[0].to_json())).unwrap();
    writeln!(file, "{{broken").unwrap();
    writeln!(
        file,
        "{}",
        serde_json::to_string(&Generator::new(3).next_result()).unwrap()
    )
    .unwrap();
    writeln!(file, "[\"not\", \"an\", \"object\"]").unwrap();
    writeln!(file, "{}", text(&events[2].to_json())).unwrap();
    let path = file.path().to_str().unwrap().to_string();
    let out = producer(&[
        "--brokers",
        &testkit::brokers(),
        "--topic",
        &topic,
        "--partitions",
        "1",
        "--source",
        "file",
        &path,
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        !out.status.success(),
        "bad input makes the exit code non-zero"
    );
    assert!(
        stdout.contains("delivered=3 failed=0 bad_input=2"),
        "{stdout}"
    );
    assert!(
        stderr.contains("line=2") && stderr.contains("line=4"),
        "{stderr}"
    );
    let got =
        tokio::task::spawn_blocking(move || testkit::consume(&topic, 3, Duration::from_secs(30)))
            .await
            .unwrap();
    let payloads: Vec<String> = got.iter().map(testkit::payload_text).collect();
    let expected: Vec<String> = [&events[0], &events[0], &events[2]]
        .iter()
        .map(|e| text(&e.to_json()))
        .collect();
    assert_eq!(payloads, expected);
}

/// Serves a fixed Random User API response to every request, like the real API.
async fn fake_randomuser(body: String) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn randomuser_source_maps_api_results() {
    let mut g = Generator::new(5);
    let results: Vec<_> = (0..4).map(|_| g.next_result()).collect();
    let body = serde_json::json!({ "results": results, "info": {"results": 4} }).to_string();
    let port = fake_randomuser(body).await;
    let topic = testkit::unique("api");
    let url = format!("http://127.0.0.1:{port}/api/");
    let brokers = testkit::brokers();
    let out = tokio::task::spawn_blocking({
        let (topic, url) = (topic.clone(), url.clone());
        move || {
            producer(&[
                "--brokers",
                &brokers,
                "--topic",
                &topic,
                "--partitions",
                "1",
                "--source",
                "randomuser",
                "--randomuser-url",
                &url,
                "--randomuser-batch",
                "4",
                "--count",
                "8",
            ])
        }
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got =
        tokio::task::spawn_blocking(move || testkit::consume(&topic, 8, Duration::from_secs(30)))
            .await
            .unwrap();
    let expected: Vec<String> = results
        .iter()
        .chain(&results)
        .map(|r| text(&r.to_event().to_json()))
        .collect();
    assert_eq!(
        got.iter().map(testkit::payload_text).collect::<Vec<_>>(),
        expected
    );
}

#[test]
fn unreachable_randomuser_api_is_a_clear_error() {
    let started = Instant::now();
    let out = producer(&[
        "--brokers",
        &testkit::brokers(),
        "--topic",
        &testkit::unique("api_down"),
        "--source",
        "randomuser",
        "--randomuser-url",
        "http://127.0.0.1:1/api/",
        "--randomuser-attempts",
        "2",
        "--count",
        "5",
    ]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        stderr.contains("Random User API at http://127.0.0.1:1/api/ unreachable after 2 attempts"),
        "{stderr}"
    );
}

/// `--metrics-addr`: the producer's counters while it publishes, `--progress log`
/// lines when stderr is not a terminal.
#[tokio::test(flavor = "multi_thread")]
async fn serves_metrics_while_publishing() {
    let topic = testkit::unique("produce_metrics");
    let port = testkit::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_producer"))
        .args(["--brokers", &testkit::brokers(), "--topic", &topic])
        .args([
            "--rate",
            "200",
            "--duration",
            "60s",
            "--metrics-addr",
            &addr,
        ])
        .args(["--progress-interval", "1s"])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://{addr}/metrics");
    let value = |text: &str, name: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit_once(' '))
            .and_then(|(_, v)| v.parse().ok())
    };
    let page = testkit::eventually("deliveries counted", Duration::from_secs(30), || async {
        let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
        (value(&text, "users_pipeline_producer_events_delivered_total")? >= 400.0).then_some(text)
    })
    .await;
    let sent = value(&page, "users_pipeline_producer_events_sent_total").unwrap();
    let delivered = value(&page, "users_pipeline_producer_events_delivered_total").unwrap();
    assert!(sent >= delivered, "sent {sent} delivered {delivered}");
    assert_eq!(
        value(&page, "users_pipeline_producer_events_failed_total"),
        Some(0.0)
    );
    assert!(
        page.contains("users_pipeline_producer_build_info"),
        "{page}"
    );
    let ready = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    // Not a terminal: periodic log lines instead of a progress bar.
    assert!(
        text(&out.stderr).contains("Publishing."),
        "{}",
        text(&out.stderr)
    );
}
