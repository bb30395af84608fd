//! Mutual TLS between members: each member's key and certificate, and TLS on the data channel
//! and the agent port when the mirror was created with **Require SSL/TLS**.
//!
//! # Identities, not a certificate authority
//!
//! Every member has its own key and a self-signed certificate, made at first start
//! ([`Identity::load_or_create`]) under `<data dir>/tls/` (`CertificateFile.pem`,
//! `PrivateKeyFile.pem`, the file names IRIS uses), or copied from `<install>/tls/<HOST>/` when
//! someone supplies them there. A member is known by its certificate's SHA-256 *fingerprint*.
//! Nothing here trusts a certificate because someone signed it: a member trusts exactly the
//! fingerprints its mirror configuration lists, and a fingerprint gets there only when a person
//! authorizes it (Edit Mirror → Pending New Members on the primary) or when a joining member
//! takes the mirror's description from the primary's agent, whose certificate it checks against
//! that description. That is the IRIS model — the primary authorizes each new member's
//! certificate — without a CA to run.
//!
//! # How a connection is checked
//!
//! The handshake is TLS 1.3 with a client certificate required on both ports. The verifiers
//! below check every handshake signature (the peer holds the key of the certificate it shows)
//! and, when the caller names one, that the server's fingerprint is the expected one; they do
//! not judge chains, names or dates, because the fingerprint is the whole of the trust. The
//! server side learns the client's fingerprint ([`Accepted::peer`]) and decides by its own rules
//! what that member may do: the primary sends journal only to members it authorized, the agent
//! carries out mirror requests only for members of its instance's mirror.
//!
//! # Blocking threads on TLS
//!
//! The mirror's data channel runs on blocking threads, one reading and one writing the same
//! connection; [`Channel`] (in [`channel`]) carries TLS for them with rustls itself, the socket
//! outside any lock, so there is no second runtime and no thread copying bytes in between. The
//! agent, being async, uses tokio-rustls ([`accept`], [`connect`]) with the same identities and
//! verifiers.
//!
//! # Telling TLS from plain frames
//!
//! Both ports also take plain connections (the local agent's probes, `ctl`, the arbiter's
//! status questions). A TLS connection starts with a handshake record, byte `0x16`; a plain
//! frame starts with the high byte of a length that is far below `0x16000000`, so one peeked
//! byte tells them apart ([`is_tls_start`]).
//!
//! # Left out
//!
//! Certificate rotation (a member with a new key must be authorized again), revocation, and
//! TLS for the arbiter's connections and for the portal.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{ClientConfig, DistinguishedName, ServerConfig, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::{Error, Result};

mod channel;

pub use channel::{Channel, accept_blocking, connect_blocking};

/// The certificate file in a member's `tls` folder.
pub const CERTIFICATE_FILE: &str = "CertificateFile.pem";
/// The private key file in a member's `tls` folder.
pub const PRIVATE_KEY_FILE: &str = "PrivateKeyFile.pem";
/// How long a handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server name a client asks for; certificates are pinned by fingerprint, not by name.
const SERVER_NAME: &str = "mirrorlab-member";

/// A member's key and certificate.
pub struct Identity {
    certificate: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    fingerprint: String,
    server: Arc<ServerConfig>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// The member's identity from `<data_dir>/tls/`; copied there first from
    /// `<install>/tls/<host>/` when supplied, or else made now (a new key and self-signed
    /// certificate for `host`).
    pub fn load_or_create(data_dir: &Path, install: Option<&Path>, host: &str) -> Result<Self> {
        let dir = data_dir.join("tls");
        let (cert, key) = (dir.join(CERTIFICATE_FILE), dir.join(PRIVATE_KEY_FILE));
        if !(cert.exists() && key.exists()) {
            fs::create_dir_all(&dir)?;
            let supplied = install.map(|i| i.join("tls").join(host));
            match supplied.filter(|s| s.join(CERTIFICATE_FILE).exists()) {
                Some(source) => {
                    let key_pem = fs::read(source.join(PRIVATE_KEY_FILE)).map_err(|e| {
                        Error::Io(format!("{}: {e}", source.join(PRIVATE_KEY_FILE).display()))
                    })?;
                    write_private(&key, &key_pem)?;
                    crate::util::write_file_atomically(
                        &cert,
                        &fs::read(source.join(CERTIFICATE_FILE))?,
                    )?;
                    tracing::info!(
                        "tls: using the certificate supplied in {}",
                        source.display()
                    );
                }
                None => {
                    let (cert_pem, key_pem) = generate(host)?;
                    // The key first: a crash between the two writes leaves no certificate,
                    // and the next start makes a new pair instead of pairing files that do
                    // not match.
                    write_private(&key, key_pem.as_bytes())?;
                    crate::util::write_file_atomically(&cert, cert_pem.as_bytes())?;
                    tracing::info!("tls: made a key and certificate in {}", dir.display());
                }
            }
        }
        Self::from_files(&cert, &key)
    }

    /// Reads a certificate and its key.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self> {
        let certificate = CertificateDer::from_pem_file(cert)
            .map_err(|e| Error::InvalidInput(format!("{}: {e}", cert.display())))?;
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| Error::InvalidInput(format!("{}: {e}", key.display())))?;
        Self::new(certificate, key)
    }

    /// A fresh identity that exists only in memory (tests, and strangers in them).
    pub fn ephemeral(host: &str) -> Result<Self> {
        let (cert_pem, key_pem) = generate(host)?;
        let certificate = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| Error::Internal(format!("certificate: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| Error::Internal(format!("key: {e}")))?;
        Self::new(certificate, key)
    }

    fn new(certificate: CertificateDer<'static>, key: PrivateKeyDer<'static>) -> Result<Self> {
        let provider = provider();
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error)?
            .with_client_cert_verifier(Arc::new(PinnedPeer::any(&provider)))
            .with_single_cert(vec![certificate.clone()], key.clone_key())
            .map_err(tls_error)?;
        Ok(Self {
            fingerprint: fingerprint(&certificate),
            certificate,
            key,
            server: Arc::new(server),
        })
    }

    /// The certificate's SHA-256 fingerprint: how other members know this one.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn client_config(&self, expected: Option<&str>) -> Result<Arc<ClientConfig>> {
        let provider = provider();
        let verifier = PinnedPeer {
            expected: expected.map(str::to_string),
            algorithms: provider.signature_verification_algorithms,
        };
        let config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(vec![self.certificate.clone()], self.key.clone_key())
            .map_err(tls_error)?;
        Ok(Arc::new(config))
    }
}

/// A key and self-signed certificate for `host`, as PEM.
fn generate(host: &str) -> Result<(String, String)> {
    let failed = |e: rcgen::Error| Error::Internal(format!("make a certificate: {e}"));
    let key = rcgen::KeyPair::generate().map_err(failed)?;
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()]).map_err(failed)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, host);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "mirrorlab member");
    let cert = params.self_signed(&key).map_err(failed)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes a private key readable by its owner only (the certificate written after it, through
/// `write_file_atomically`, makes both renames durable: same folder).
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp: PathBuf = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    Ok(())
}

/// `SHA256:` and the hex digest of a certificate's DER bytes.
pub fn fingerprint(certificate: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, certificate);
    let mut text = String::with_capacity(7 + 64);
    text.push_str("SHA256:");
    for byte in digest.as_ref() {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

fn tls_error(e: rustls::Error) -> Error {
    Error::Internal(format!("tls: {e}"))
}

/// Checks handshake signatures, and the server's fingerprint when one is expected.
#[derive(Debug)]
struct PinnedPeer {
    expected: Option<String>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedPeer {
    fn any(provider: &CryptoProvider) -> Self {
        Self {
            expected: None,
            algorithms: provider.signature_verification_algorithms,
        }
    }

    fn check(&self, end_entity: &CertificateDer<'_>) -> std::result::Result<(), rustls::Error> {
        match &self.expected {
            Some(expected) if *expected != fingerprint(end_entity) => Err(rustls::Error::General(
                format!("the peer's certificate is not the authorized one ({expected})"),
            )),
            _ => Ok(()),
        }
    }
}

impl ServerCertVerifier for PinnedPeer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|_| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for PinnedPeer {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Whether the first byte of a connection starts a TLS handshake rather than a plain frame.
pub fn is_tls_start(first: u8) -> bool {
    first == 0x16
}

fn peer_of(certificates: Option<&[CertificateDer<'static>]>) -> Result<String> {
    certificates
        .and_then(|c| c.first())
        .map(|c| fingerprint(c))
        .ok_or_else(|| Error::Unavailable("the peer showed no certificate".into()))
}

/// An accepted TLS connection and the fingerprint its client showed.
pub struct Accepted<S> {
    /// The connection.
    pub stream: S,
    /// The client's certificate fingerprint.
    pub peer: String,
}

/// Accepts a TLS connection (async: the agent).
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    identity: &Identity,
) -> Result<Accepted<tokio_rustls::server::TlsStream<S>>> {
    accept_within(stream, identity, HANDSHAKE_TIMEOUT).await
}

/// [`accept`], failing when the handshake takes longer than `within`.
async fn accept_within<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    identity: &Identity,
    within: Duration,
) -> Result<Accepted<tokio_rustls::server::TlsStream<S>>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(identity.server.clone());
    let stream = tokio::time::timeout(within, acceptor.accept(stream))
        .await
        .map_err(|_| Error::Unavailable("tls handshake timed out".into()))?
        .map_err(|e| Error::Unavailable(format!("tls handshake: {e}")))?;
    let peer = peer_of(stream.get_ref().1.peer_certificates())?;
    Ok(Accepted { stream, peer })
}

/// Opens TLS on a connected stream, requiring the server's fingerprint to be `expected` when
/// given (async: calls to agents). Returns the stream and the server's fingerprint.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    identity: &Identity,
    expected: Option<&str>,
) -> Result<(tokio_rustls::client::TlsStream<S>, String)> {
    let connector = tokio_rustls::TlsConnector::from(identity.client_config(expected)?);
    let name = ServerName::try_from(SERVER_NAME).expect("a valid server name");
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, stream))
        .await
        .map_err(|_| Error::Unavailable("tls handshake timed out".into()))?
        .map_err(|e| Error::Unavailable(format!("tls handshake: {e}")))?;
    let peer = peer_of(stream.get_ref().1.peer_certificates())?;
    Ok((stream, peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = Identity::load_or_create(dir.path(), None, "hosta").unwrap();
        let again = Identity::load_or_create(dir.path(), None, "hosta").unwrap();
        assert_eq!(first.fingerprint(), again.fingerprint());
        assert!(first.fingerprint().starts_with("SHA256:"));
        assert_eq!(first.fingerprint().len(), 7 + 64);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join("tls").join(PRIVATE_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the key is private");
        // A supplied pair under install/tls/<host>/ is used instead of a new one.
        let install = tempfile::tempdir().unwrap();
        let supplied = install.path().join("tls").join("hostb");
        fs::create_dir_all(&supplied).unwrap();
        for file in [CERTIFICATE_FILE, PRIVATE_KEY_FILE] {
            fs::copy(dir.path().join("tls").join(file), supplied.join(file)).unwrap();
        }
        let other = tempfile::tempdir().unwrap();
        let copied = Identity::load_or_create(other.path(), Some(install.path()), "hostb").unwrap();
        assert_eq!(copied.fingerprint(), first.fingerprint());
    }
}
