//! What users read must match what the binaries do: the README's configuration table
//! is generated from the clap definitions, and the compose file only sets variables
//! the binaries read. `UPDATE_DOCS=1 cargo test -p consumer --test docs` rewrites
//! the README table.

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::CommandFactory;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn table(name: &str, command: &clap::Command) -> String {
    let mut out =
        format!("#### `{name}`\n\n| flag | env | default | meaning |\n|---|---|---|---|\n");
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version") {
            continue;
        }
        let flag = match arg.get_short() {
            Some(s) => format!("`-{s}`, `--{long}`"),
            None => format!("`--{long}`"),
        };
        let env = arg
            .get_env()
            .map(|e| format!("`{}`", e.to_string_lossy()))
            .unwrap_or_default();
        let default: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let default = if default.is_empty() {
            String::new()
        } else {
            format!("`{}`", default.join(" "))
        };
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        let help = help.replace('|', "\\|").replace('\n', " ");
        out.push_str(&format!("| {flag} | {env} | {default} | {help} |\n"));
    }
    out
}

fn env_names(command: &clap::Command) -> BTreeSet<String> {
    command
        .get_arguments()
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect()
}

/// Checks (or, with `UPDATE_DOCS`, rewrites) the README between two markers.
fn generated_section(marker: &str, generated: &str) {
    // Tests run in parallel: one rewrite of the README at a time.
    static README: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = README.lock().unwrap_or_else(|e| e.into_inner());
    let path = repo("README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let (begin, end) = (
        format!("<!-- {marker}:begin -->\n"),
        format!("<!-- {marker}:end -->"),
    );
    let start = readme
        .find(&begin)
        .unwrap_or_else(|| panic!("README has a {marker}:begin marker"))
        + begin.len();
    let stop = readme
        .find(&end)
        .unwrap_or_else(|| panic!("README has a {marker}:end marker"));
    if std::env::var_os("UPDATE_DOCS").is_some() {
        let updated = format!("{}{}{}", &readme[..start], generated, &readme[stop..]);
        std::fs::write(&path, updated).unwrap();
        return;
    }
    assert_eq!(
        readme[start..stop],
        *generated,
        "README section {marker} is stale: run UPDATE_DOCS=1 cargo test -p consumer --test docs"
    );
}

#[test]
fn readme_configuration_table_matches_the_binaries() {
    let generated = format!(
        "{}\n{}",
        table("producer", &producer::Config::command()),
        table("consumer", &consumer::Config::command())
    );
    generated_section("config", &generated);
}

#[test]
fn readme_lists_every_key_of_the_pipeline_file() {
    let mut generated = String::from("| key | meaning |\n|---|---|\n");
    for (key, meaning) in consumer::outputs::file::KEYS {
        generated.push_str(&format!("| `{key}` | {meaning} |\n"));
    }
    generated_section("pipeline-keys", &generated);
}

#[test]
fn compose_file_is_pinned_healthy_and_only_sets_variables_the_binaries_read() {
    let text = std::fs::read_to_string(repo("docker-compose.yml")).unwrap();
    let compose: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    let services = compose["services"].as_mapping().expect("services");
    let names: BTreeSet<&str> = services.keys().filter_map(|k| k.as_str()).collect();
    for s in ["kafka", "kafka-init", "postgres", "producer", "consumer"] {
        assert!(names.contains(s), "service {s} missing");
    }
    for (name, service) in services {
        if let Some(image) = service["image"].as_str() {
            let tag = image.rsplit_once(':').map(|(_, t)| t);
            assert!(
                tag.is_some_and(|t| t != "latest" && !t.is_empty()),
                "{name:?}: image {image} must be pinned"
            );
        }
    }
    assert!(
        services["kafka"]["image"]
            .as_str()
            .unwrap()
            .starts_with("apache/kafka:")
    );
    assert!(
        services["postgres"]["image"]
            .as_str()
            .unwrap()
            .starts_with("postgres:")
    );
    for s in ["kafka", "postgres"] {
        assert!(
            services[s]["healthcheck"]["test"].is_sequence(),
            "{s} has a healthcheck"
        );
    }
    let kafka_env = &services["kafka"]["environment"];
    assert!(
        kafka_env["KAFKA_PROCESS_ROLES"]
            .as_str()
            .unwrap()
            .contains("controller"),
        "KRaft"
    );
    assert!(
        kafka_env["KAFKA_ADVERTISED_LISTENERS"]
            .as_str()
            .unwrap()
            .contains("localhost:${KAFKA_PORT:-9092}")
    );
    // Every published port: on loopback only, its host port overridable.
    for (name, service) in services {
        for port in service["ports"].as_sequence().into_iter().flatten() {
            let port = port.as_str().unwrap_or_default();
            assert!(
                port.starts_with("127.0.0.1:${") && port.contains(":-"),
                "{name:?}: port {port} must be 127.0.0.1:${{VAR:-default}}:container"
            );
        }
    }
    // Kafka's log on its volume (the image's default is the container's /tmp).
    let log_dirs = kafka_env["KAFKA_LOG_DIRS"]
        .as_str()
        .expect("KAFKA_LOG_DIRS");
    let kafka_volumes: Vec<&str> = services["kafka"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        kafka_volumes.contains(&format!("kafka-data:{log_dirs}").as_str()),
        "{kafka_volumes:?}"
    );
    let pg = &services["postgres"]["environment"];
    assert_eq!(pg["POSTGRES_DB"].as_str(), Some("userdb"));
    assert_eq!(pg["POSTGRES_PASSWORD"].as_str(), Some("postgres"));

    for (service, command) in [
        ("producer", producer::Config::command()),
        ("consumer", consumer::Config::command()),
    ] {
        let known = env_names(&command);
        let env = services[service]["environment"]
            .as_mapping()
            .expect("environment");
        for key in env.keys().filter_map(|k| k.as_str()) {
            assert!(
                known.contains(key),
                "{service} sets {key}, which it does not read"
            );
        }
        assert_eq!(
            services[service]["depends_on"]["kafka"]["condition"].as_str(),
            Some("service_healthy"),
            "{service} waits for a healthy kafka"
        );
        assert_eq!(
            services[service]["image"].as_str(),
            Some("${PIPELINE_IMAGE:-users-pipeline:local}"),
            "{service}: one image for both programs"
        );
        assert!(
            services[service]["healthcheck"]["test"].is_sequence(),
            "{service} has a healthcheck, so `up --wait` means running"
        );
    }
    // One build: the consumer builds the image, the producer runs it.
    assert_eq!(services["consumer"]["build"].as_str(), Some("."));
    assert!(services["producer"]["build"].is_null());
    assert!(
        services["producer"]["environment"]["PRODUCER_SEED"].is_null(),
        "a new seed per run unless set"
    );
    assert_eq!(
        services["consumer"]["depends_on"]["postgres"]["condition"].as_str(),
        Some("service_healthy")
    );
    assert_eq!(
        services["consumer"]["restart"].as_str(),
        Some("unless-stopped")
    );
    let volumes: Vec<&str> = services["consumer"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    let out_dir = services["consumer"]["environment"]["OUTPUT_DIR"]
        .as_str()
        .unwrap();
    assert!(
        volumes.contains(&format!("./output_data:{out_dir}").as_str()),
        "{volumes:?}"
    );
}

#[test]
fn dockerfile_builds_both_binaries_into_a_small_non_root_image() {
    let text = std::fs::read_to_string(repo("Dockerfile")).unwrap();
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "multi-stage: {froms:?}");
    for f in &froms {
        let image = f.split_whitespace().nth(1).unwrap();
        assert!(
            image.contains(':') && !image.ends_with(":latest"),
            "pinned: {f}"
        );
    }
    assert!(
        froms[1].contains("slim"),
        "small runtime image: {}",
        froms[1]
    );
    assert!(text.contains("cargo build --release --locked --bin producer --bin consumer"));
    assert!(text.contains("COPY --from=build /usr/local/bin/producer /usr/local/bin/consumer"));
    let user = text
        .lines()
        .rev()
        .find(|l| l.starts_with("USER "))
        .expect("USER");
    assert!(!user.contains("root"), "{user}");
}
