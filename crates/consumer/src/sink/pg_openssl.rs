//! TLS for the PostgreSQL driver, on OpenSSL, with a context of our own making.
//!
//! postgres-native-tls and postgres-openssl both start from OpenSSL's
//! `SslConnector`, whose constructor parses the system's whole trust store (and
//! native-tls parses it a second time, through openssl-probe's paths): some 150
//! certificates, about 50 ms of CPU per process, for `sslmode=prefer` and `require`
//! too, which check no certificate. Here the context loads the system's store only
//! when the chain is checked against it (`verify-ca`/`verify-full` without a root
//! certificate file), and then once, from OpenSSL's default paths (which honour
//! `SSL_CERT_FILE` and `SSL_CERT_DIR`).
//!
//! The rest is what postgres-openssl does: SNI with a host name (never with an
//! address), the host name or address checked when asked, and `tls-server-end-point`
//! channel binding for SCRAM-SHA-256-PLUS.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::ssl::{self, Ssl, SslContext, SslMethod, SslOptions, SslVerifyMode};
use openssl::x509::verify::X509CheckFlags;
use openssl::x509::{X509, X509Ref, X509VerifyResult};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_openssl::SslStream;
use tokio_postgres::tls::{self, ChannelBinding, MakeTlsConnect, TlsConnect};

/// Which certificates the server's chain is checked against.
pub enum Trust {
    /// None: the chain is not checked (`prefer` and `require` without a root file).
    Nothing,
    /// The system's trust store.
    System,
    /// These certificates only (`sslrootcert`).
    Certificates(Vec<X509>),
}

impl Trust {
    /// The certificates of a PEM file (one or more).
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        let certificates =
            X509::stack_from_pem(pem).map_err(|e| format!("not PEM certificates: {e}"))?;
        if certificates.is_empty() {
            return Err("no certificate in it".into());
        }
        Ok(Trust::Certificates(certificates))
    }
}

/// The ciphers `SslConnector` allows (those of postgres-openssl and native-tls).
const CIPHERS: &str = "DEFAULT:!aNULL:!eNULL:!MD5:!3DES:!DES:!RC4:!IDEA:!SEED:!aDSS:!SRP:!PSK";

/// Makes one TLS session per connection from a context built once.
#[derive(Clone)]
pub struct MakeTls {
    context: SslContext,
    check_host: bool,
}

impl MakeTls {
    /// A context that checks the chain against `trust`, the host name when
    /// `check_host`, and presents `identity` (PEM certificate chain, PEM key) when
    /// given. Fails with a one-line reason.
    pub fn new(
        trust: Trust,
        check_host: bool,
        identity: Option<(&[u8], &[u8])>,
    ) -> Result<Self, String> {
        let setup = |e: ErrorStack| format!("TLS set-up failed: {e}");
        let mut builder = SslContext::builder(SslMethod::tls_client()).map_err(setup)?;
        // `SslConnector`'s settings, but for the trust store it would load.
        let mut options = SslOptions::ALL | SslOptions::NO_COMPRESSION;
        options &= !SslOptions::DONT_INSERT_EMPTY_FRAGMENTS;
        builder.set_options(options);
        builder.set_mode(
            ssl::SslMode::AUTO_RETRY
                | ssl::SslMode::ACCEPT_MOVING_WRITE_BUFFER
                | ssl::SslMode::ENABLE_PARTIAL_WRITE,
        );
        builder.set_cipher_list(CIPHERS).map_err(setup)?;
        match trust {
            Trust::Nothing => builder.set_verify(SslVerifyMode::NONE),
            Trust::System => {
                builder.set_verify(SslVerifyMode::PEER);
                builder.set_default_verify_paths().map_err(setup)?;
            }
            Trust::Certificates(certificates) => {
                builder.set_verify(SslVerifyMode::PEER);
                for certificate in certificates {
                    builder
                        .cert_store_mut()
                        .add_cert(certificate)
                        .map_err(setup)?;
                }
            }
        }
        if let Some((chain, key)) = identity {
            let bad = |e: ErrorStack| {
                format!("sslcert/sslkey: not a PEM certificate and unencrypted PEM key: {e}")
            };
            let mut chain = X509::stack_from_pem(chain).map_err(bad)?.into_iter();
            let leaf = chain
                .next()
                .ok_or_else(|| "sslcert: no certificate in it".to_string())?;
            // An empty passphrase: an encrypted key fails here instead of OpenSSL
            // asking for its passphrase on the terminal.
            let key = PKey::private_key_from_pem_passphrase(key, b"").map_err(bad)?;
            builder.set_certificate(&leaf).map_err(bad)?;
            // OpenSSL refuses a key that is not the certificate's already here.
            let mismatch = |e: ErrorStack| format!("sslkey is not the key of sslcert: {e}");
            builder.set_private_key(&key).map_err(mismatch)?;
            builder.check_private_key().map_err(mismatch)?;
            for certificate in chain {
                builder.add_extra_chain_cert(certificate).map_err(bad)?;
            }
        }
        Ok(Self {
            context: builder.build(),
            check_host,
        })
    }

    /// One session for a connection to `host`.
    fn session(&self, host: &str) -> Result<Ssl, ErrorStack> {
        let mut ssl = Ssl::new(&self.context)?;
        let address = host.parse::<IpAddr>().ok();
        // SNI names a host, never an address (RFC 6066).
        if address.is_none() {
            ssl.set_hostname(host)?;
        }
        if self.check_host {
            let param = ssl.param_mut();
            param.set_hostflags(X509CheckFlags::NO_PARTIAL_WILDCARDS);
            match address {
                Some(ip) => param.set_ip(ip)?,
                None => param.set_host(host)?,
            }
        }
        Ok(ssl)
    }
}

impl<S> MakeTlsConnect<S> for MakeTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type TlsConnect = Connect;
    type Error = ErrorStack;

    fn make_tls_connect(&mut self, host: &str) -> Result<Connect, ErrorStack> {
        self.session(host).map(Connect)
    }
}

/// The handshake of one connection.
pub struct Connect(Ssl);

impl<S> TlsConnect<S> for Connect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type Error = Handshake;
    type Future = Pin<Box<dyn Future<Output = Result<TlsStream<S>, Handshake>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let mut stream = SslStream::new(self.0, stream).map_err(|e| Handshake {
                reason: e.to_string(),
            })?;
            match Pin::new(&mut stream).connect().await {
                Ok(()) => Ok(TlsStream(stream)),
                Err(e) => Err(Handshake::failed(&e, stream.ssl().verify_result())),
            }
        })
    }
}

/// A handshake that failed: OpenSSL's errors, then why the certificate was
/// refused, in parentheses (as native-tls words it; `TlsSettings::explain` reads it).
#[derive(Debug)]
pub struct Handshake {
    reason: String,
}

impl Handshake {
    fn failed(error: &ssl::Error, verify: X509VerifyResult) -> Self {
        let reason = if verify == X509VerifyResult::OK {
            error.to_string()
        } else {
            format!("{error} ({})", verify.error_string())
        };
        Self { reason }
    }
}

impl fmt::Display for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for Handshake {}

/// An encrypted connection.
pub struct TlsStream<S>(SslStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tls::TlsStream for TlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        match self.0.ssl().peer_certificate() {
            Some(certificate) => server_end_point(&certificate)
                .map_or_else(ChannelBinding::none, ChannelBinding::tls_server_end_point),
            None => ChannelBinding::none(),
        }
    }
}

/// RFC 5929's `tls-server-end-point`: the certificate's hash with its signature's
/// digest, SHA-256 in place of MD5 and SHA-1.
fn server_end_point(certificate: &X509Ref) -> Option<Vec<u8>> {
    let algorithms = certificate
        .signature_algorithm()
        .object()
        .nid()
        .signature_algorithms()?;
    let digest = match algorithms.digest {
        Nid::MD5 | Nid::SHA1 => MessageDigest::sha256(),
        nid => MessageDigest::from_nid(nid)?,
    };
    certificate.digest(digest).ok().map(|d| d.to_vec())
}

#[cfg(test)]
mod tests {
    use openssl::asn1::Asn1Time;
    use openssl::bn::BigNum;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::pkey::Private;
    use openssl::ssl::SslAcceptor;
    use openssl::x509::X509Name;
    use openssl::x509::extension::SubjectAlternativeName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn key() -> PKey<Private> {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
    }

    /// A self-signed certificate for `localhost`, and its key.
    fn self_signed() -> (X509, PKey<Private>) {
        let key = key();
        let mut name = X509Name::builder().unwrap();
        name.append_entry_by_text("CN", "localhost").unwrap();
        let name = name.build();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(&BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap())
            .unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        let san = SubjectAlternativeName::new()
            .dns("localhost")
            .build(&b.x509v3_context(None, None))
            .unwrap();
        b.append_extension(san).unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        (b.build(), key)
    }

    /// Serves one TLS handshake with `certificate` on an in-memory pipe, then
    /// reads what the server wrote: the client's handshake result.
    async fn handshake(
        mut client: MakeTls,
        host: &str,
        (certificate, key): &(X509, PKey<Private>),
    ) -> Result<(), String> {
        let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
        acceptor.set_certificate(certificate).unwrap();
        acceptor.set_private_key(key).unwrap();
        let acceptor = acceptor.build();
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move {
            let ssl = Ssl::new(acceptor.context()).unwrap();
            let mut stream = SslStream::new(ssl, theirs).unwrap();
            if Pin::new(&mut stream).accept().await.is_ok() {
                let _ = stream.write_all(b"hello").await;
                let _ = stream.shutdown().await;
            }
        });
        let connect =
            MakeTlsConnect::<tokio::io::DuplexStream>::make_tls_connect(&mut client, host)
                .map_err(|e| e.to_string())?;
        let result = match connect.connect(ours).await {
            Ok(mut stream) => {
                let mut text = Vec::new();
                stream
                    .read_to_end(&mut text)
                    .await
                    .map_err(|e| e.to_string())?;
                assert_eq!(text, b"hello");
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        };
        server.abort();
        result
    }

    #[tokio::test]
    async fn the_chain_and_the_host_are_checked_only_when_asked() {
        let server = self_signed();
        let trusted = || Trust::Certificates(vec![server.0.clone()]);
        // Not checked: any certificate is taken.
        let nothing = MakeTls::new(Trust::Nothing, false, None).unwrap();
        assert_eq!(handshake(nothing, "127.0.0.1", &server).await, Ok(()));
        // Checked against the right certificate, by the name it lists.
        let full = MakeTls::new(trusted(), true, None).unwrap();
        assert_eq!(handshake(full, "localhost", &server).await, Ok(()));
        // ... by an address it does not list: refused, with the reason.
        let full = MakeTls::new(trusted(), true, None).unwrap();
        let refused = handshake(full, "127.0.0.1", &server).await.unwrap_err();
        assert!(
            refused.contains("certificate verify failed")
                && refused.contains("IP address mismatch"),
            "{refused}"
        );
        // The chain alone (verify-ca) takes the address.
        let ca = MakeTls::new(trusted(), false, None).unwrap();
        assert_eq!(handshake(ca, "127.0.0.1", &server).await, Ok(()));
        // Another CA's certificate is refused.
        let other = MakeTls::new(Trust::Certificates(vec![self_signed().0]), false, None).unwrap();
        let refused = handshake(other, "localhost", &server).await.unwrap_err();
        assert!(
            refused.contains("certificate verify failed") && refused.contains('('),
            "{refused}"
        );
        // The system's store does not hold a self-signed certificate.
        let system = MakeTls::new(Trust::System, false, None).unwrap();
        assert!(handshake(system, "localhost", &server).await.is_err());
    }

    #[test]
    fn a_client_certificate_needs_its_own_unencrypted_key() {
        let (certificate, key) = self_signed();
        let pem = certificate.to_pem().unwrap();
        let key_pem = key.private_key_to_pem_pkcs8().unwrap();
        assert!(MakeTls::new(Trust::Nothing, false, Some((&pem, &key_pem))).is_ok());
        // The traditional (SEC1 / PKCS#1) form is read too.
        let ec_pem = key.ec_key().unwrap().private_key_to_pem().unwrap();
        assert!(MakeTls::new(Trust::Nothing, false, Some((&pem, &ec_pem))).is_ok());
        let other_key = self::key().private_key_to_pem_pkcs8().unwrap();
        let e = MakeTls::new(Trust::Nothing, false, Some((&pem, &other_key))).err();
        assert!(e.unwrap().contains("not the key of sslcert"));
        let encrypted = key
            .private_key_to_pem_pkcs8_passphrase(openssl::symm::Cipher::aes_128_cbc(), b"pw")
            .unwrap();
        let e = MakeTls::new(Trust::Nothing, false, Some((&pem, &encrypted))).err();
        assert!(e.unwrap().contains("unencrypted PEM key"));
        let e = MakeTls::new(Trust::Nothing, false, Some((b"nope", &key_pem))).err();
        assert!(e.unwrap().contains("sslcert"));
    }

    #[test]
    fn channel_binding_hashes_the_certificate_with_its_signature_digest() {
        let (certificate, _) = self_signed();
        let bound = server_end_point(&certificate).unwrap();
        let sha256 = certificate.digest(MessageDigest::sha256()).unwrap();
        assert_eq!(bound, sha256.to_vec());
    }
}
