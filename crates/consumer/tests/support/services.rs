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

fn scratch(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(testkit::unique(prefix));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// tansu with its durable sqlite engine on a port of its own.
pub struct PrivateBroker {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateBroker {
    pub fn start() -> Self {
        let mut b = Self {
            port: testkit::free_port(),
            dir: scratch("tansu"),
            child: None,
        };
        b.launch();
        b
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn launch(&mut self) {
        let bin = tansu_bin();
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::File::create(self.dir.join("tansu.log")).unwrap();
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
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
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        std::thread::sleep(down);
        self.launch();
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
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
}

impl PrivatePostgres {
    /// A cluster with trust authentication.
    pub fn start() -> Self {
        Self::init(None)
    }

    /// A cluster that requires `password` for the user postgres (scram-sha-256).
    pub fn start_with_password(password: &str) -> Self {
        Self::init(Some(password))
    }

    fn init(password: Option<&str>) -> Self {
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
        let pg = Self {
            port: testkit::free_port(),
            dir,
            bin,
            run_as,
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
        pg.up();
        pg
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
                "-p {} -k {} -c listen_addresses=127.0.0.1",
                self.port,
                self.dir.display()
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
