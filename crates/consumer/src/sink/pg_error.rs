//! Errors of PostgreSQL, and what each means for a batch: the one place where a
//! failure is classified (by SQLSTATE) as transient (retried), about the rows
//! (isolated as dead letters) or fatal (the consumer stops with the reason).

use std::fmt;
use std::time::Duration;

use tokio_postgres::error::SqlState;

use crate::retry::Retriable;

/// Errors of the PostgreSQL sink. Each keeps the driver's error (and so its
/// SQLSTATE) where there is one.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("cannot connect to PostgreSQL ({target}): {cause}")]
    Connect {
        target: String,
        #[source]
        cause: ConnectError,
    },
    #[error(
        "cannot connect to PostgreSQL ({target}): database {name:?} is missing and cannot be created: {cause}"
    )]
    CreateDatabase {
        target: String,
        name: String,
        #[source]
        cause: ConnectError,
    },
    #[error("invalid --database-url: {0}")]
    Url(String),
    #[error("table {table}: {reason}")]
    Schema { table: String, reason: String },
    #[error("PostgreSQL: {0}")]
    Db(#[source] PgCause),
    #[error("database {0:?} does not exist")]
    NoDatabase(String),
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        PgError::Db(PgCause(e))
    }
}

impl PgError {
    /// What the failure means for the batch.
    pub fn fault(&self) -> Fault {
        match self {
            PgError::Db(c) => fault(&c.0),
            // Mid-run, a lost server comes back; at start-up nothing is retried.
            PgError::Connect { .. } => Fault::Transient,
            PgError::Url(_)
            | PgError::Schema { .. }
            | PgError::NoDatabase(_)
            | PgError::CreateDatabase { .. } => Fault::Fatal,
        }
    }
}

impl Retriable for PgError {
    fn retriable(&self) -> bool {
        self.fault() == Fault::Transient
    }
}

/// A driver error, shown as its most useful line: the server's message and
/// SQLSTATE, or the chain of causes (which the message already carries, so the
/// chain ends here).
#[derive(Debug)]
pub struct PgCause(pub tokio_postgres::Error);

impl fmt::Display for PgCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&reason(&self.0))
    }
}

impl std::error::Error for PgCause {}

/// The most useful one-line description of a driver error.
pub fn reason(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => common::cli::one_line(e),
    }
}

/// What a failed statement means for the batch it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Heals by waiting (connection lost, server restarting, deadlock, lock
    /// timeout, resources short): retry the whole transaction with backoff.
    Transient,
    /// About the rows (a value, a constraint, a trigger, a size limit): isolate
    /// them as dead letters and commit the rest.
    Rows,
    /// About the statement or the schema (permissions, a dropped table, a type
    /// changed under us): neither retrying nor isolating rows can help.
    Fatal,
}

/// Classifies a driver error by its SQLSTATE; no SQLSTATE means the connection
/// failed (I/O, closed), which is transient.
pub fn fault(e: &tokio_postgres::Error) -> Fault {
    e.code().map_or(Fault::Transient, |c| fault_of(c.code()))
}

/// The SQLSTATE table behind [`fault`].
pub fn fault_of(code: &str) -> Fault {
    const TRANSIENT: [&str; 11] = [
        "40001", // serialization_failure
        "40P01", // deadlock_detected
        "40003", // statement_completion_unknown
        "55P03", // lock_not_available (lock_timeout)
        "55006", // object_in_use
        "57014", // query_canceled (statement_timeout)
        "57P01", // admin_shutdown
        "57P02", // crash_shutdown
        "57P03", // cannot_connect_now (starting up)
        "25006", // read_only_sql_transaction (a failover in progress)
        "25P03", // idle_in_transaction_session_timeout
    ];
    const TRANSIENT_CLASSES: [&str; 3] = [
        "08", // connection exception
        "53", // insufficient resources (disk full, out of memory, too many connections)
        "58", // system error (I/O)
    ];
    const ROW_CLASSES: [&str; 9] = [
        "22", // data exception (a value out of range, bad encoding, ...)
        "23", // integrity constraint violation
        "27", // triggered data change violation
        "2F", // SQL routine exception
        "38", // external routine exception
        "39", // external routine invocation exception
        "44", // WITH CHECK OPTION violation
        "54", // program limit exceeded (an index row too large, ...)
        "P0", // PL/pgSQL: RAISE in a trigger, ASSERT
    ];
    let class = code.get(..2).unwrap_or(code);
    if TRANSIENT.contains(&code) || TRANSIENT_CLASSES.contains(&class) {
        Fault::Transient
    } else if ROW_CLASSES.contains(&class) || code == "40002" {
        Fault::Rows
    } else {
        Fault::Fatal
    }
}

/// Why a connection attempt failed.
#[derive(Debug)]
pub enum ConnectError {
    Pg(tokio_postgres::Error),
    Timeout(Duration),
    /// The connection closed and none could be made in its place.
    Closed,
    /// The TLS handshake failed: which check refused the server, in words.
    Tls(String),
}

impl ConnectError {
    pub(crate) fn code(&self) -> Option<&SqlState> {
        match self {
            ConnectError::Pg(e) => e.code(),
            _ => None,
        }
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Pg(e) => f.write_str(&reason(e)),
            ConnectError::Timeout(t) => write!(f, "no answer within {t:?}"),
            ConnectError::Closed => f.write_str("the connection is closed"),
            ConnectError::Tls(why) => f.write_str(why),
        }
    }
}

/// Its message already carries the driver's chain of causes.
impl std::error::Error for ConnectError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_classified_once_by_sqlstate() {
        for transient in [
            "08006", "08001", "40001", "40P01", "53300", "53100", "57P01", "55P03",
        ] {
            assert_eq!(fault_of(transient), Fault::Transient, "{transient}");
        }
        // A value too long, a unique violation, an index row too large, a trigger's
        // RAISE, a bad encoding: each is about the rows that carry it.
        for rows in [
            "22001", "23505", "23514", "54000", "P0001", "22021", "22008",
        ] {
            assert_eq!(fault_of(rows), Fault::Rows, "{rows}");
        }
        // Permissions, a dropped table or column, a syntax error: about the statement.
        for fatal in ["42501", "42P01", "42703", "42601", "XX000", "0A000"] {
            assert_eq!(fault_of(fatal), Fault::Fatal, "{fatal}");
        }
    }

    #[test]
    fn only_transient_errors_are_retriable() {
        let schema = PgError::Schema {
            table: "t".into(),
            reason: "r".into(),
        };
        assert!(!schema.retriable());
        let lost = PgError::Connect {
            target: "x".into(),
            cause: ConnectError::Closed,
        };
        assert!(lost.retriable());
        assert_eq!(
            lost.to_string(),
            "cannot connect to PostgreSQL (x): the connection is closed"
        );
    }
}
