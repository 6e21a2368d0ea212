//! How the clients reach a secured Kafka cluster (TLS, SASL), and a secret type
//! that never prints.
//!
//! Managed clusters (Confluent Cloud, MSK, Aiven, Redpanda Cloud) and most company
//! clusters need TLS and SASL; the flags here cover what they document, and `-X`
//! covers the rest (applied after these, so it can override them). The settings
//! are checked before any client is made: a missing username or an unreadable CA
//! file is a one-line error at start-up, not a handshake that fails forever.
//! librdkafka is built with OpenSSL, so SASL/PLAIN, SCRAM-SHA-256/512 and
//! OAUTHBEARER (unsecured tokens, `-X sasl.oauthbearer.config=...`) are available;
//! GSSAPI (Kerberos) and OAUTHBEARER's OIDC method are not.

use std::fmt;
use std::path::{Path, PathBuf};

use rdkafka::ClientConfig;

use crate::Error;

/// A value that must never be printed: `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_string()))
    }
}

/// librdkafka's `security.protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Plaintext => "plaintext",
            Protocol::Ssl => "ssl",
            Protocol::SaslPlaintext => "sasl_plaintext",
            Protocol::SaslSsl => "sasl_ssl",
        }
    }

    fn sasl(self) -> bool {
        matches!(self, Protocol::SaslPlaintext | Protocol::SaslSsl)
    }

    fn tls(self) -> bool {
        matches!(self, Protocol::Ssl | Protocol::SaslSsl)
    }
}

/// librdkafka's `sasl.mechanism`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mechanism {
    #[value(name = "PLAIN")]
    Plain,
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
    #[value(name = "OAUTHBEARER")]
    OauthBearer,
}

impl Mechanism {
    fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
            Mechanism::OauthBearer => "OAUTHBEARER",
        }
    }

    /// Whether a username and password are needed.
    fn needs_password(self) -> bool {
        !matches!(self, Mechanism::OauthBearer)
    }
}

/// The security flags both binaries (and the operator commands) take.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Security {
    /// How to talk to the brokers: plaintext, ssl, sasl_plaintext or sasl_ssl.
    #[arg(
        long,
        env = "KAFKA_SECURITY_PROTOCOL",
        value_enum,
        default_value = "plaintext",
        global = true
    )]
    pub kafka_security_protocol: Protocol,

    /// SASL mechanism with a sasl_* protocol: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or
    /// OAUTHBEARER.
    #[arg(long, env = "KAFKA_SASL_MECHANISM", value_enum, global = true)]
    pub kafka_sasl_mechanism: Option<Mechanism>,

    /// SASL username (PLAIN and SCRAM).
    #[arg(long, env = "KAFKA_SASL_USERNAME", global = true)]
    pub kafka_sasl_username: Option<String>,

    /// SASL password. Prefer the env var or --kafka-sasl-password-file: a value
    /// given as a flag is visible to every user of the machine in `ps`.
    #[arg(
        long,
        env = "KAFKA_SASL_PASSWORD",
        hide_env_values = true,
        global = true
    )]
    pub kafka_sasl_password: Option<Secret>,

    /// A file holding the SASL password (a trailing newline is ignored), e.g. a
    /// mounted Kubernetes or Docker secret.
    #[arg(long, env = "KAFKA_SASL_PASSWORD_FILE", global = true)]
    pub kafka_sasl_password_file: Option<PathBuf>,

    /// CA certificates (PEM) that sign the brokers' certificates; the system's
    /// trust store when unset. Broker host names are always checked.
    #[arg(long, env = "KAFKA_CA_FILE", global = true)]
    pub kafka_ca_file: Option<PathBuf>,

    /// Client certificate (PEM) for clusters that authenticate clients by TLS (mTLS).
    #[arg(long, env = "KAFKA_CERT_FILE", global = true)]
    pub kafka_cert_file: Option<PathBuf>,

    /// The client certificate's private key (PEM).
    #[arg(long, env = "KAFKA_KEY_FILE", global = true)]
    pub kafka_key_file: Option<PathBuf>,
}

impl Security {
    /// The librdkafka settings these flags stand for, checked: every combination
    /// that cannot work is refused here with what to change.
    pub fn settings(&self) -> Result<Vec<(&'static str, String)>, Error> {
        let protocol = self.kafka_security_protocol;
        let refuse = |why: String| Err(Error::Security(why));
        let mut out = vec![("security.protocol", protocol.name().to_string())];
        match (protocol.sasl(), self.kafka_sasl_mechanism) {
            (true, None) => {
                return refuse(format!(
                    "--kafka-security-protocol {} needs --kafka-sasl-mechanism \
                     (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER)",
                    protocol.name()
                ));
            }
            (true, Some(mechanism)) => {
                out.push(("sasl.mechanism", mechanism.name().to_string()));
                if mechanism.needs_password() {
                    let Some(user) = &self.kafka_sasl_username else {
                        return refuse(format!(
                            "SASL {} needs --kafka-sasl-username",
                            mechanism.name()
                        ));
                    };
                    out.push(("sasl.username", user.clone()));
                    out.push(("sasl.password", self.password(mechanism)?));
                }
            }
            (false, _) => {
                let sasl_set = self.kafka_sasl_mechanism.is_some()
                    || self.kafka_sasl_username.is_some()
                    || self.kafka_sasl_password.is_some()
                    || self.kafka_sasl_password_file.is_some();
                if sasl_set {
                    return refuse(format!(
                        "SASL settings are given but --kafka-security-protocol is {}: use \
                         sasl_ssl (or sasl_plaintext)",
                        protocol.name()
                    ));
                }
            }
        }
        self.tls_settings(protocol, &mut out)?;
        Ok(out)
    }

    fn tls_settings(
        &self,
        protocol: Protocol,
        out: &mut Vec<(&'static str, String)>,
    ) -> Result<(), Error> {
        let files = [
            ("--kafka-ca-file", "ssl.ca.location", &self.kafka_ca_file),
            (
                "--kafka-cert-file",
                "ssl.certificate.location",
                &self.kafka_cert_file,
            ),
            ("--kafka-key-file", "ssl.key.location", &self.kafka_key_file),
        ];
        for (flag, key, file) in files {
            let Some(path) = file else { continue };
            if !protocol.tls() {
                return Err(Error::Security(format!(
                    "{flag} is given but --kafka-security-protocol is {}: use ssl or sasl_ssl",
                    protocol.name()
                )));
            }
            readable(flag, path)?;
            out.push((key, path.display().to_string()));
        }
        if self.kafka_cert_file.is_some() != self.kafka_key_file.is_some() {
            return Err(Error::Security(
                "--kafka-cert-file and --kafka-key-file go together: give both or neither".into(),
            ));
        }
        Ok(())
    }

    /// The password, from the environment (or flag) or the file; exactly one.
    fn password(&self, mechanism: Mechanism) -> Result<String, Error> {
        match (&self.kafka_sasl_password, &self.kafka_sasl_password_file) {
            (Some(_), Some(_)) => Err(Error::Security(
                "give the SASL password once: KAFKA_SASL_PASSWORD or \
                 --kafka-sasl-password-file, not both"
                    .into(),
            )),
            (Some(secret), None) => Ok(secret.expose().to_string()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Error::Security(format!(
                        "cannot read --kafka-sasl-password-file {}: {e}",
                        path.display()
                    ))
                })?;
                Ok(text.trim_end_matches(['\r', '\n']).to_string())
            }
            (None, None) => Err(Error::Security(format!(
                "SASL {} needs a password: set KAFKA_SASL_PASSWORD or \
                 --kafka-sasl-password-file",
                mechanism.name()
            ))),
        }
    }

    /// Applies the settings to a client configuration.
    pub fn apply(&self, config: &mut ClientConfig) -> Result<(), Error> {
        for (k, v) in self.settings()? {
            config.set(k, v);
        }
        Ok(())
    }
}

fn readable(flag: &str, path: &Path) -> Result<(), Error> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| Error::Security(format!("cannot read {flag} {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        security: Security,
    }

    fn parse(args: &[&str]) -> Security {
        let mut all = vec!["cli"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap().security
    }

    fn refused(args: &[&str]) -> String {
        parse(args).settings().unwrap_err().to_string()
    }

    #[test]
    fn sasl_scram_over_tls_becomes_librdkafka_settings() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, pw) = (dir.path().join("ca.pem"), dir.path().join("pw"));
        std::fs::write(&ca, "pem").unwrap();
        std::fs::write(&pw, "s3cret\n").unwrap();
        let s = parse(&[
            "--kafka-security-protocol=sasl_ssl",
            "--kafka-sasl-mechanism=SCRAM-SHA-512",
            "--kafka-sasl-username=app",
            "--kafka-sasl-password-file",
            pw.to_str().unwrap(),
            "--kafka-ca-file",
            ca.to_str().unwrap(),
        ]);
        let settings = s.settings().unwrap();
        let get = |k: &str| {
            settings
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(get("sasl.username"), Some("app"));
        assert_eq!(get("sasl.password"), Some("s3cret"));
        assert_eq!(get("ssl.ca.location"), ca.to_str());
        // The password never shows in the configuration's Debug output.
        assert!(!format!("{:?}", parse(&["--kafka-sasl-password=hunter2"])).contains("hunter2"));
    }

    #[test]
    fn combinations_that_cannot_work_are_refused_with_what_to_change() {
        assert!(
            refused(&["--kafka-security-protocol=sasl_ssl"])
                .contains("needs --kafka-sasl-mechanism")
        );
        assert!(
            refused(&[
                "--kafka-security-protocol=sasl_ssl",
                "--kafka-sasl-mechanism=PLAIN"
            ])
            .contains("needs --kafka-sasl-username")
        );
        assert!(
            refused(&[
                "--kafka-security-protocol=sasl_plaintext",
                "--kafka-sasl-mechanism=PLAIN",
                "--kafka-sasl-username=u"
            ])
            .contains("needs a password")
        );
        assert!(refused(&["--kafka-sasl-username=u"]).contains("use sasl_ssl"));
        assert!(refused(&["--kafka-ca-file=/nowhere"]).contains("use ssl or sasl_ssl"));
        assert!(
            refused(&[
                "--kafka-security-protocol=ssl",
                "--kafka-ca-file=/nowhere/ca.pem"
            ])
            .contains("cannot read --kafka-ca-file /nowhere/ca.pem")
        );
        assert!(
            refused(&[
                "--kafka-security-protocol=ssl",
                "--kafka-cert-file=/etc/hostname"
            ])
            .contains("go together")
        );
        assert_eq!(
            parse(&[]).settings().unwrap(),
            vec![("security.protocol", "plaintext".into())]
        );
        // OAUTHBEARER takes its token settings from -X.
        assert!(
            parse(&[
                "--kafka-security-protocol=sasl_ssl",
                "--kafka-sasl-mechanism=OAUTHBEARER"
            ])
            .settings()
            .is_ok()
        );
    }

    #[test]
    fn secrets_print_as_stars() {
        assert_eq!(Secret::new("x").to_string(), "***");
        assert_eq!(format!("{:?}", Secret::new("x")), "***");
    }
}
