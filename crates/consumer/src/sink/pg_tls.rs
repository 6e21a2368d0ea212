//! TLS to PostgreSQL, decided the way libpq decides it.
//!
//! tokio-postgres knows only `sslmode=disable|prefer|require` and refuses the
//! parameters every managed PostgreSQL documents (`verify-ca`, `verify-full`,
//! `sslrootcert`, `sslcert`, `sslkey`). So the connection string is split here: the
//! TLS parameters are taken off and decided by [`TlsSettings`], the rest goes to the
//! driver. The modes mean what they mean to libpq:
//!
//! | sslmode | encrypted | certificate checked | host name checked |
//! |---|---|---|---|
//! | `disable` | no | - | - |
//! | `prefer` (default) | if the server offers it | when a root certificate file is there | no |
//! | `require` | yes | when a root certificate file is there (as libpq) | no |
//! | `verify-ca` | yes | yes | no |
//! | `verify-full` | yes | yes | yes |
//!
//! The root certificates are `sslrootcert=FILE` (PEM, one or more), else
//! `~/.postgresql/root.crt` when it exists (libpq's default), else the system's
//! trust store. `sslrootcert=system` (libpq 16) means the system's store and
//! requires `verify-full`, which it implies. `sslcert` and `sslkey` give a client
//! certificate.
//!
//! Where this differs from libpq (documented in the README): `verify-ca` and
//! `verify-full` without any root certificate file use the system's store (libpq
//! refuses); `sslkey` must be an unencrypted PEM key (PKCS#8 or the traditional
//! form); there is no default client certificate
//! (`~/.postgresql/postgresql.crt`); the `PGSSL*` environment variables are not read;
//! `sslmode=allow` is refused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use tokio_postgres::config::SslMode as DriverMode;

use super::pg_openssl::{MakeTls, Trust};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, String> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err("sslmode=allow is not supported: use prefer (TLS when the \
                            server offers it) or disable"
                    .into());
            }
            other => {
                return Err(format!(
                    "unknown sslmode={other:?}: expected disable, prefer, require, \
                     verify-ca or verify-full"
                ));
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where the root certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// A PEM file (`sslrootcert=FILE`, or `~/.postgresql/root.crt`).
    File(PathBuf),
    /// The system's trust store (`sslrootcert=system`, or no file at all).
    System,
}

/// The TLS parameters of a connection string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TlsSettings {
    pub mode: SslMode,
    /// `sslrootcert` as given.
    pub root_cert: Option<String>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// The parameters taken off the connection string.
const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Splits the TLS parameters off a connection string (URL or `key=value` form):
/// returns what the driver is given and the TLS settings.
pub fn split(url: &str) -> Result<(String, TlsSettings), String> {
    let (rest, found) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        split_url(url)?
    } else {
        split_key_values(url)?
    };
    let mut mode = None;
    let mut settings = TlsSettings {
        mode: SslMode::Prefer,
        root_cert: None,
        client_cert: None,
        client_key: None,
    };
    for (k, v) in found {
        match k.as_str() {
            "sslmode" => mode = Some(SslMode::parse(&v)?),
            "sslrootcert" => settings.root_cert = Some(v),
            "sslcert" => settings.client_cert = Some(PathBuf::from(v)),
            _ => settings.client_key = Some(PathBuf::from(v)),
        }
    }
    settings.mode = match (mode, settings.root_cert.as_deref()) {
        // libpq 16: the system's store only with the strictest check.
        (None, Some("system")) => SslMode::VerifyFull,
        (Some(m), Some("system")) if m != SslMode::VerifyFull => {
            return Err(format!(
                "sslrootcert=system needs sslmode=verify-full (as in libpq), not {}",
                m.name()
            ));
        }
        (m, _) => m.unwrap_or(SslMode::Prefer),
    };
    if settings.client_cert.is_some() != settings.client_key.is_some() {
        return Err("sslcert and sslkey go together: give both or neither".into());
    }
    Ok((rest, settings))
}

type Found = Vec<(String, String)>;

/// The URL form: the query starts at the first `?` after the user info, so a `?`
/// in an unencoded password is not taken for it.
fn split_url(url: &str) -> Result<(String, Found), String> {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let from = after_scheme + url[after_scheme..].find('@').map_or(0, |i| i + 1);
    let Some(q) = url[from..].find('?').map(|i| from + i) else {
        return Ok((url.to_string(), Vec::new()));
    };
    let (base, query) = (&url[..q], &url[q + 1..]);
    let mut found = Vec::new();
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if TLS_KEYS.contains(&percent_decode(k)?.as_str()) {
            found.push((percent_decode(k)?, percent_decode(v)?));
        } else {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, found))
}

/// The `key=value` form, tokenised as libpq does: spaces around `=`, values in
/// single quotes, backslash escapes. What is kept is given back quoted.
fn split_key_values(s: &str) -> Result<(String, Found), String> {
    let mut found = Vec::new();
    let mut kept = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("connection string: {key:?} has no value"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        let quoted = chars.next_if_eq(&'\'').is_some();
        loop {
            match chars.next() {
                Some('\\') => value.extend(chars.next()),
                Some('\'') if quoted => break,
                Some(c) if !quoted && c.is_whitespace() => break,
                Some(c) => value.push(c),
                None if quoted => {
                    return Err(format!("connection string: {key}'s quote is not closed"));
                }
                None => break,
            }
        }
        if TLS_KEYS.contains(&key.as_str()) {
            found.push((key, value));
        } else {
            let escaped = value.replace('\\', "\\\\").replace('\'', "\\'");
            kept.push(format!("{key}='{escaped}'"));
        }
    }
    Ok((kept.join(" "), found))
}

fn percent_decode(value: &str) -> Result<String, String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-encoding in {value:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{value:?} is not UTF-8 once decoded"))
}

impl TlsSettings {
    /// The driver's own mode: whether TLS is attempted and whether it is required.
    pub fn driver_mode(&self) -> DriverMode {
        match self.mode {
            SslMode::Disable => DriverMode::Disable,
            SslMode::Prefer => DriverMode::Prefer,
            _ => DriverMode::Require,
        }
    }

    /// Where the root certificates come from; `home` is the user's home directory.
    pub fn roots(&self, home: Option<&Path>) -> Roots {
        match self.root_cert.as_deref() {
            Some("system") => Roots::System,
            Some(file) => Roots::File(PathBuf::from(file)),
            None => match home.map(|h| h.join(".postgresql/root.crt")) {
                Some(default) if default.is_file() => Roots::File(default),
                _ => Roots::System,
            },
        }
    }

    /// What is checked of the server's certificate: (chain, host name). libpq's
    /// `require` checks the chain when a root certificate file is there.
    pub fn checks(&self, roots: &Roots) -> (bool, bool) {
        match self.mode {
            SslMode::Disable => (false, false),
            // libpq verifies the chain whenever a root certificate file is there.
            SslMode::Prefer | SslMode::Require => (matches!(roots, Roots::File(_)), false),
            SslMode::VerifyCa => (true, false),
            SslMode::VerifyFull => (true, true),
        }
    }

    /// The TLS connector, or `None` with `sslmode=disable`. Fails with a one-line
    /// reason naming the file that cannot be read.
    ///
    /// Built once per process for the same settings: one that checks the chain
    /// against the system's trust store parses its every certificate, and each of
    /// the consumer's connections (the sink, the offset oracle, the readiness probe)
    /// would otherwise build its own.
    pub fn connector(&self) -> Result<Option<MakeTls>, String> {
        // The home directory decides whether ~/.postgresql/root.crt is read.
        type Built = HashMap<(TlsSettings, Option<PathBuf>), MakeTls>;
        static BUILT: OnceLock<Mutex<Built>> = OnceLock::new();
        if self.mode == SslMode::Disable {
            return Ok(None);
        }
        let key = (self.clone(), std::env::var_os("HOME").map(PathBuf::from));
        let built = BUILT.get_or_init(Default::default);
        if let Some(c) = built.lock().ok().and_then(|b| b.get(&key).cloned()) {
            return Ok(Some(c));
        }
        let connector = self.build_connector(key.1.as_deref())?;
        if let Ok(mut b) = built.lock() {
            b.insert(key, connector.clone());
        }
        Ok(Some(connector))
    }

    fn build_connector(&self, home: Option<&Path>) -> Result<MakeTls, String> {
        let roots = self.roots(home);
        let (chain, host) = self.checks(&roots);
        let trust = match (chain, &roots) {
            // Roots that check nothing are not worth loading the system's bundle for.
            (false, _) => Trust::Nothing,
            (true, Roots::System) => Trust::System,
            (true, Roots::File(file)) => Trust::from_pem(&read(file, "sslrootcert")?)
                .map_err(|e| format!("sslrootcert={}: {e}", file.display()))?,
        };
        let identity = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => Some((read(cert, "sslcert")?, read(key, "sslkey")?)),
            _ => None,
        };
        MakeTls::new(
            trust,
            host,
            identity.as_ref().map(|(c, k)| (&c[..], &k[..])),
        )
    }

    /// A failed handshake in words a user can act on: which check refused the
    /// server, and what the settings were. `None` when `error` is not about TLS.
    pub fn explain(&self, error: &str, host: &str) -> Option<String> {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let roots = match self.roots(home.as_deref()) {
            Roots::File(f) => format!("sslrootcert={}", f.display()),
            Roots::System => "the system's trust store".to_string(),
        };
        let mode = self.mode.name();
        let lower = error.to_ascii_lowercase();
        if lower.contains("hostname mismatch") || lower.contains("ip address mismatch") {
            Some(format!(
                "TLS: the server's certificate is not for host {host:?} (sslmode={mode} checks \
                 the host name; connect by a name the certificate lists, or use verify-ca)"
            ))
        } else if lower.contains("certificate verify failed") {
            let detail = error
                .rsplit_once('(')
                .map(|(_, d)| d.trim_end_matches(')').trim())
                .unwrap_or("verification failed");
            Some(format!(
                "TLS: the server's certificate is not signed by a CA in {roots} \
                 (sslmode={mode}; {detail})"
            ))
        } else if lower.contains("server does not support tls") {
            Some(format!(
                "TLS: the server does not accept TLS and sslmode={mode} requires it \
                 (use sslmode=prefer or disable, or turn on ssl in the server)"
            ))
        } else {
            None
        }
    }
}

/// Where the consumer connects: the driver's configuration and how TLS is done.
#[derive(Clone)]
pub struct Endpoint {
    pub config: tokio_postgres::Config,
    pub tls: TlsSettings,
    connector: Option<MakeTls>,
}

impl Endpoint {
    /// Parses a connection string (URL or `key=value` form) with libpq's TLS
    /// parameters. The error never quotes the string (it may hold a password).
    pub fn parse(url: &str) -> Result<Self, String> {
        let (rest, tls) = split(url)?;
        let mut config: tokio_postgres::Config = rest.parse().map_err(|e| format!("{e}"))?;
        // Every sslmode was taken off: one the driver still saw would be overridden
        // below, perhaps weakened. Refuse rather than guess.
        if config.get_ssl_mode() != DriverMode::Prefer {
            return Err(
                "sslmode is given in a form this program does not read: write it as \
                        ?sslmode=... in a URL or sslmode=... in key=value form"
                    .into(),
            );
        }
        config.ssl_mode(tls.driver_mode());
        let connector = tls.connector()?;
        Ok(Self {
            config,
            tls,
            connector,
        })
    }

    /// The same server and settings, another database.
    pub fn with_dbname(&self, name: &str) -> Self {
        let mut other = self.clone();
        other.config.dbname(name);
        other
    }

    /// Opens a connection, driving it on a task of its own; `on_close` is told why
    /// the connection ended, if it failed.
    pub async fn connect(
        &self,
        on_close: fn(tokio_postgres::Error),
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        fn drive<F>(connection: F, on_close: fn(tokio_postgres::Error))
        where
            F: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
        {
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    on_close(e);
                }
            });
        }
        let client = match &self.connector {
            Some(tls) => {
                let (client, connection) = self.config.connect(tls.clone()).await?;
                drive(connection, on_close);
                client
            }
            None => {
                let (client, connection) = self.config.connect(tokio_postgres::NoTls).await?;
                drive(connection, on_close);
                client
            }
        };
        Ok(client)
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {what}={}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_off_the_url_and_the_rest_kept() {
        let (rest, s) = split(
            "postgres://u:p@db.example.com:6432/app?sslmode=verify-full&application_name=x\
             &sslrootcert=%2Fetc%2Fca%20b.pem",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgres://u:p@db.example.com:6432/app?application_name=x"
        );
        assert_eq!(s.mode, SslMode::VerifyFull);
        assert_eq!(s.root_cert.as_deref(), Some("/etc/ca b.pem"));
        let (rest, s) = split("postgres://u@h/db?sslmode=require").unwrap();
        assert_eq!(
            (rest.as_str(), s.mode),
            ("postgres://u@h/db", SslMode::Require)
        );
        let (rest, s) = split("host=h dbname=d sslmode=verify-ca sslrootcert=/ca.pem").unwrap();
        assert_eq!(rest, "host='h' dbname='d'");
        assert_eq!(
            (s.mode, s.root_cert.as_deref()),
            (SslMode::VerifyCa, Some("/ca.pem"))
        );
        // libpq's default.
        assert_eq!(split("postgres://h/d").unwrap().1.mode, SslMode::Prefer);
        // A `?` in an unencoded password is not the query.
        let (rest, s) = split("postgres://app:p?ss@db/u?sslmode=require").unwrap();
        assert_eq!(
            (rest.as_str(), s.mode),
            ("postgres://app:p?ss@db/u", SslMode::Require)
        );
        // libpq's key=value rules: spaces around `=`, quoted values with spaces.
        let (rest, s) = split(
            "host = db  sslmode = verify-full sslrootcert='/my certs/ca.pem' password='a b\\'c'",
        )
        .unwrap();
        assert_eq!(s.mode, SslMode::VerifyFull);
        assert_eq!(s.root_cert.as_deref(), Some("/my certs/ca.pem"));
        assert_eq!(rest, "host='db' password='a b\\'c'");
        let parsed: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(parsed.get_password(), Some(&b"a b'c"[..]));
        assert!(
            split("host=db password='open")
                .unwrap_err()
                .contains("not closed")
        );
        // The system's store only with verify-full, which it implies.
        assert_eq!(
            split("postgres://h/d?sslrootcert=system").unwrap().1.mode,
            SslMode::VerifyFull
        );
        assert!(
            split("postgres://h/d?sslrootcert=system&sslmode=require")
                .unwrap_err()
                .contains("needs sslmode=verify-full")
        );
    }

    #[test]
    fn unknown_or_unsupported_modes_and_half_client_certificates_are_refused() {
        assert!(
            split("postgres://h/d?sslmode=verify")
                .unwrap_err()
                .contains("unknown sslmode")
        );
        assert!(
            split("postgres://h/d?sslmode=allow")
                .unwrap_err()
                .contains("use prefer")
        );
        assert!(
            split("postgres://h/d?sslcert=/c.pem")
                .unwrap_err()
                .contains("go together")
        );
        assert!(
            split("postgres://h/d?sslrootcert=%zz")
                .unwrap_err()
                .contains("percent")
        );
    }

    #[test]
    fn the_modes_check_what_libpq_checks() {
        let settings = |mode, root: Option<&str>| TlsSettings {
            mode,
            root_cert: root.map(str::to_string),
            client_cert: None,
            client_key: None,
        };
        let file = Roots::File("/ca.pem".into());
        let s = settings(SslMode::Require, Some("/ca.pem"));
        assert_eq!(s.roots(None), file);
        // `require` (and `prefer`) with a root certificate verify the chain, as in libpq.
        assert_eq!(s.checks(&file), (true, false));
        assert_eq!(settings(SslMode::Prefer, None).checks(&file), (true, false));
        assert_eq!(
            settings(SslMode::Require, None).checks(&Roots::System),
            (false, false)
        );
        assert_eq!(
            settings(SslMode::VerifyCa, None).checks(&Roots::System),
            (true, false)
        );
        assert_eq!(
            settings(SslMode::VerifyFull, None).checks(&file),
            (true, true)
        );
        assert_eq!(
            settings(SslMode::Prefer, None).driver_mode(),
            DriverMode::Prefer
        );
        assert_eq!(
            settings(SslMode::VerifyCa, None).driver_mode(),
            DriverMode::Require
        );
        assert_eq!(
            settings(SslMode::Disable, None).driver_mode(),
            DriverMode::Disable
        );
        assert_eq!(
            settings(SslMode::VerifyFull, Some("system")).roots(None),
            Roots::System
        );
        let home = tempfile::tempdir().unwrap();
        assert_eq!(
            settings(SslMode::VerifyFull, None).roots(Some(home.path())),
            Roots::System
        );
        std::fs::create_dir(home.path().join(".postgresql")).unwrap();
        std::fs::write(home.path().join(".postgresql/root.crt"), "x").unwrap();
        assert_eq!(
            settings(SslMode::VerifyFull, None).roots(Some(home.path())),
            Roots::File(home.path().join(".postgresql/root.crt"))
        );
    }

    #[test]
    fn a_refused_handshake_says_which_check_refused_it() {
        let s = TlsSettings {
            mode: SslMode::VerifyFull,
            root_cert: Some("/ca.pem".into()),
            client_cert: None,
            client_key: None,
        };
        let host = s
            .explain("error performing TLS handshake: ... certificate verify failed:../ssl/statem/statem_clnt.c:1889: (Hostname mismatch)", "127.0.0.1")
            .unwrap();
        assert!(host.contains("not for host \"127.0.0.1\""), "{host}");
        let ca = s
            .explain("error performing TLS handshake: ... certificate verify failed:x.c:1: (unable to get local issuer certificate)", "h")
            .unwrap();
        assert!(
            ca.contains("not signed by a CA in sslrootcert=/ca.pem")
                && ca.contains("unable to get local issuer certificate"),
            "{ca}"
        );
        assert!(s.explain("connection refused", "h").is_none());
        let bad = s.connector().err().unwrap();
        assert!(bad.contains("cannot read sslrootcert=/ca.pem"), "{bad}");
    }
}
