//! Private services for the fault suite: a broker and a PostgreSQL server of the
//! test's own, so that stopping them disturbs no other test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn wait_port(port: u16, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Kills a process this test started and waits for it to exit.
fn stop(child: Option<Child>) {
    if let Some(mut c) = child {
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn scratch(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(testkit::unique(prefix));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// tansu with its durable sqlite engine on a port of its own.
pub struct PrivateBroker {
    pub port: u16,
    /// Where clients are told to connect (a TLS proxy in front, or the broker).
    advertised: String,
    /// Clients must log in with SASL (tansu's `--authentication`).
    authentication: bool,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateBroker {
    pub fn start() -> Self {
        let port = testkit::free_port();
        Self::start_advertising(port, &format!("127.0.0.1:{port}"))
    }

    /// A broker on `port` that tells clients to connect to `advertised`.
    pub fn start_advertising(port: u16, advertised: &str) -> Self {
        let mut b = Self {
            port,
            advertised: advertised.to_string(),
            authentication: false,
            dir: scratch("tansu"),
            child: None,
        };
        b.launch();
        b
    }

    /// A broker that requires SASL, knowing one SCRAM-SHA-512 user. (tansu creates
    /// users over its own protocol, so the user is made before logins are required.)
    pub fn start_with_scram_user(user: &str, password: &str) -> Self {
        let mut b = Self::start();
        let out = Command::new(tansu_bin())
            .args(["user", "create", "--mechanism", "scram512", "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", b.port))
            .args([user, password])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tansu user create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        b.authentication = true;
        // tansu panics when started again within ~2 s of the old process.
        b.restart(Duration::from_millis(2500));
        b
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn launch(&mut self) {
        let bin = tansu_bin();
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://{}", self.advertised);
        let log = std::fs::File::create(self.dir.join("tansu.log")).unwrap();
        let mut command = Command::new(&bin);
        command.args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &advertised,
        ]);
        if self.authentication {
            command.arg("--authentication");
        }
        let child = command
            .arg("--storage-engine")
            .arg(format!("sqlite://{}/tansu.db", self.dir.display()))
            // tansu reads sqlite:///abs/path relative to its working directory.
            .current_dir("/")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        self.child = Some(child);
        assert!(
            wait_port(self.port, Duration::from_secs(30)),
            "tansu did not start"
        );
    }

    /// Kills the broker (as a crash would), waits `down`, starts it again.
    pub fn restart(&mut self, down: Duration) {
        stop(self.child.take());
        std::thread::sleep(down);
        self.launch();
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        stop(self.child.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tansu_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TANSU_BIN") {
        return p.into();
    }
    let cached = dirs_home().join(".cache/users-pipeline/bin/tansu");
    if cached.exists() {
        return cached;
    }
    PathBuf::from("tansu")
}

fn dirs_home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from)
}

/// A throwaway PostgreSQL cluster (initdb) that the test can stop and start.
pub struct PrivatePostgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    run_as: Option<String>,
    /// Server settings given at start (`-c name=value`).
    settings: Vec<String>,
}

impl PrivatePostgres {
    /// A cluster with trust authentication.
    pub fn start() -> Self {
        Self::init(None, None)
    }

    /// A cluster that requires `password` for the user postgres (scram-sha-256).
    pub fn start_with_password(password: &str) -> Self {
        Self::init(Some(password), None)
    }

    /// A cluster that accepts TCP connections only over TLS, with the server
    /// certificate `server.pem`/`server.key` of `certs` (scripts/make-certs.sh).
    /// Connections over its Unix socket ([`Self::socket_url`]) need no TLS.
    pub fn start_with_tls(certs: &Path) -> Self {
        Self::init(None, Some(certs))
    }

    fn init(password: Option<&str>, tls: Option<&Path>) -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries under /usr/lib/postgresql")
            .flatten()
            .map(|e| e.path().join("bin"))
            .find(|p| p.join("initdb").exists())
            .expect("initdb");
        let dir = scratch("pg");
        // initdb refuses to run as root.
        let run_as = is_root().then(|| "postgres".to_string());
        if let Some(user) = &run_as {
            assert!(
                Command::new("chown")
                    .arg(user)
                    .arg(&dir)
                    .status()
                    .unwrap()
                    .success()
            );
        }
        let mut pg = Self {
            port: testkit::free_port(),
            dir,
            bin,
            run_as,
            settings: Vec::new(),
        };
        let data = pg.dir.join("data");
        let mut initdb = pg.command("initdb");
        initdb.arg("-D").arg(&data).args(["-U", "postgres"]);
        match password {
            Some(pw) => {
                let file = pg.dir.join("pwfile");
                std::fs::write(&file, pw).unwrap();
                if let Some(user) = &pg.run_as {
                    assert!(
                        Command::new("chown")
                            .arg(user)
                            .arg(&file)
                            .status()
                            .unwrap()
                            .success()
                    );
                }
                initdb.args(["-A", "scram-sha-256", "--pwfile"]).arg(&file);
            }
            None => {
                initdb.args(["-A", "trust"]);
            }
        }
        let out = initdb.output().unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(certs) = tls {
            pg.require_tls(certs);
        }
        pg.up();
        pg
    }

    fn require_tls(&mut self, certs: &Path) {
        for file in ["server.pem", "server.key"] {
            let to = self.dir.join(file);
            std::fs::copy(certs.join(file), &to).unwrap();
            if let Some(user) = &self.run_as {
                assert!(
                    Command::new("chown")
                        .arg(user)
                        .arg(&to)
                        .status()
                        .unwrap()
                        .success()
                );
            }
        }
        let data = self.dir.join("data");
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
        )
        .unwrap();
        self.settings = vec![
            "ssl=on".into(),
            format!("ssl_cert_file={}", self.dir.join("server.pem").display()),
            format!("ssl_key_file={}", self.dir.join("server.key").display()),
        ];
    }

    /// A URL over the Unix socket (no TLS needed), for the test's own checks.
    pub fn socket_url(&self, db: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={db}",
            self.dir.display(),
            self.port
        )
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The URL with a password.
    pub fn url_with_password(&self, password: &str) -> String {
        format!(
            "postgres://postgres:{password}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    fn command(&self, tool: &str) -> Command {
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(self.bin.join(tool));
                c
            }
            None => Command::new(self.bin.join(tool)),
        }
    }

    pub fn up(&self) {
        let status = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .arg("-w")
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1{}",
                self.port,
                self.dir.display(),
                self.settings
                    .iter()
                    .map(|s| format!(" -c {s}"))
                    .collect::<String>()
            ))
            .arg("start")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "PostgreSQL did not start");
    }

    /// Stops the server (fast shutdown: sessions are cut, as in an outage).
    pub fn down(&self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "fast", "-w", "stop"])
            .stdout(Stdio::null())
            .status();
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.down();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The `producer` binary next to the `consumer` one (scripts/test.sh builds both).
pub fn producer_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_consumer")).with_file_name("producer");
    assert!(
        p.exists(),
        "{} missing: run `cargo build --bins` first (scripts/test.sh does)",
        p.display()
    );
    p
}

/// A TLS-terminating proxy (stunnel) on a port of its own, forwarding to a
/// plaintext port: a broker seen through it speaks TLS.
pub struct TlsProxy {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl TlsProxy {
    /// Accepts TLS on `port` with `certs/server-bundle.pem`, forwards to `to`.
    pub fn start(port: u16, to: u16, certs: &Path) -> Self {
        let bin = ["stunnel4", "stunnel"]
            .into_iter()
            .map(|b| Path::new("/usr/bin").join(b))
            .find(|p| p.exists())
            .expect("stunnel (Debian package stunnel4; scripts/test.sh installs it)");
        let dir = scratch("stunnel");
        let conf = dir.join("stunnel.conf");
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\nsyslog = no\noutput = {log}\n\
                 [kafka]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{to}\n\
                 cert = {bundle}\n",
                log = dir.join("stunnel.log").display(),
                bundle = certs.join("server-bundle.pem").display()
            ),
        )
        .unwrap();
        let child = Command::new(&bin)
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        assert!(
            wait_port(port, Duration::from_secs(10)),
            "stunnel did not start: {}",
            std::fs::read_to_string(dir.join("stunnel.log")).unwrap_or_default()
        );
        Self {
            port,
            dir,
            child: Some(child),
        }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        stop(self.child.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A throwaway CA and a server certificate for `names` (scripts/make-certs.sh).
pub fn make_certs(dir: &Path, names: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/make-certs.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(dir)
        .args(names)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "make-certs.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
