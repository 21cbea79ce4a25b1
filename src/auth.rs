//! Who may call what: bearer tokens checked by the transport before any service sees a
//! request, and the TLS settings (certificates, client CA) it terminates connections with.
//!
//! Three classes of RPC, by path: health (and the KServe liveness / readiness probes) is always
//! open; inference (Predict, Sentiment, Stats, KServe inference and metadata, reflection) needs
//! an API key when any is configured; administration (`Admin.*`, which holds `ResetStats`, and the KServe
//! repository RPCs) needs an admin key when any is configured, else follows the inference
//! rule. An admin key also opens inference RPCs. Keys are compared in constant time, kept in
//! [`Secret`]s whose `Debug` prints nothing, and never logged: logs and rate limits identify a
//! key holder by [`fingerprint`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::Error;

/// A key held in memory; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        Secret(key.into())
    }

    /// Constant-time comparison with a presented key (time depends only on the lengths).
    fn matches(&self, presented: &[u8]) -> bool {
        let mine = self.0.as_bytes();
        let n = mine.len().max(presented.len());
        let mut same = (mine.len() as u64).ct_eq(&(presented.len() as u64));
        for i in 0..n {
            same &= mine.get(i).copied().unwrap_or(0).ct_eq(&presented.get(i).copied().unwrap_or(0));
        }
        same.into()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// A short, non-reversible name for a key (first 8 hex digits of its SHA-256), for logs and
/// rate-limit buckets.
pub fn fingerprint(key: &[u8]) -> String {
    Sha256::digest(key).iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// What an RPC needs to be called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Health checks: never guarded.
    Open,
    /// Inference, metadata, Stats and reflection.
    Inference,
    /// Model administration and statistics reset.
    Admin,
}

/// Classifies a gRPC path (`/package.Service/Method`).
pub fn classify(path: &str) -> Access {
    let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or((path, ""));
    match (service, method) {
        ("grpc.health.v1.Health", _) => Access::Open,
        ("inference.GRPCInferenceService", "ServerLive" | "ServerReady" | "ModelReady") => Access::Open,
        ("torchwire.v1.Admin", _) => Access::Admin,
        ("inference.GRPCInferenceService", m) if m.starts_with("Repository") => Access::Admin,
        _ => Access::Inference,
    }
}

/// The configured keys.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    /// Keys that open inference RPCs; empty = inference is open.
    pub api: Vec<Secret>,
    /// Keys that open everything; empty = admin RPCs follow the inference rule.
    pub admin: Vec<Secret>,
}

impl Keys {
    /// Whether any key is configured.
    pub fn enabled(&self) -> bool {
        !self.api.is_empty() || !self.admin.is_empty()
    }

    /// Checks the `authorization` header of a call to `path`. Every configured key is compared
    /// (no early exit), so timing says nothing about which one matched. Answers the
    /// [`fingerprint`] of the key it verified, when the call needed one (the caller's identity
    /// for rate limits); `None` when the call was open.
    pub fn check(&self, path: &str, authorization: Option<&[u8]>) -> Result<Option<String>, Error> {
        // Without keys (the default) nothing is classified: this runs on every request.
        if !self.enabled() {
            return Ok(None);
        }
        let access = classify(path);
        if access == Access::Open {
            return Ok(None);
        }
        let needs_admin = access == Access::Admin && !self.admin.is_empty();
        let inference_open = self.api.is_empty();
        if !needs_admin && inference_open {
            // Only admin keys are set and this is an inference call.
            return Ok(None);
        }
        let token = match authorization {
            None => return Err(Error::Unauthenticated { reason: "missing `authorization: Bearer <key>` metadata" }),
            Some(v) => match v.strip_prefix(b"Bearer ").or_else(|| v.strip_prefix(b"bearer ")) {
                Some(t) => t.trim_ascii(),
                None => return Err(Error::Unauthenticated { reason: "`authorization` must be `Bearer <key>`" }),
            },
        };
        let is_admin = any_matches(&self.admin, token);
        let is_api = any_matches(&self.api, token);
        match (needs_admin, is_admin, is_api) {
            (_, true, _) | (false, false, true) => Ok(Some(fingerprint(token))),
            (true, false, true) => Err(Error::PermissionDenied { rpc: path_method(path) }),
            _ => Err(Error::Unauthenticated { reason: "the bearer key is not valid" }),
        }
    }
}

fn any_matches(keys: &[Secret], token: &[u8]) -> bool {
    keys.iter().fold(false, |found, k| found | k.matches(token))
}

fn path_method(path: &str) -> String {
    crate::error::clip(path.trim_start_matches('/'), 96)
}

/// Reads keys from a file: one per line; blank lines and `#` comments skipped.
pub fn read_key_file(path: &Path) -> anyhow::Result<Vec<Secret>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading key file {}: {e}", path.display()))?;
    let keys: Vec<Secret> =
        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(Secret::new).collect();
    if keys.is_empty() {
        anyhow::bail!("key file {} holds no key", path.display());
    }
    Ok(keys)
}

/// Checks that keys are usable bearer tokens (printable ASCII, no spaces, at least 16 bytes).
pub fn validate_keys(keys: &[Secret], flag: &str) -> anyhow::Result<()> {
    for k in keys {
        let b = k.0.as_bytes();
        if b.len() < 16 {
            anyhow::bail!("{flag}: a key must be at least 16 characters long");
        }
        if !b.iter().all(|c| c.is_ascii_graphic()) {
            anyhow::bail!("{flag}: a key may hold printable ASCII only, without spaces");
        }
    }
    Ok(())
}

/// TLS files given on the command line.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle: when set, clients must present a certificate it signed (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// Builds the rustls server configuration (TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`: gRPC and
/// the HTTP/JSON door share the port).
pub fn server_tls_config(files: &TlsFiles) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(Iterator::collect)
        .map_err(|e| anyhow::anyhow!("--tls-cert {}: {e}", files.cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("--tls-cert {}: no certificate in the file", files.cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| anyhow::anyhow!("--tls-key {}: {e}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS protocol versions: {e}"))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)
                .map_err(|e| anyhow::anyhow!("--tls-client-ca {}: {e}", ca.display()))?
            {
                let cert = cert.map_err(|e| anyhow::anyhow!("--tls-client-ca {}: {e}", ca.display()))?;
                roots.add(cert).map_err(|e| anyhow::anyhow!("--tls-client-ca {}: {e}", ca.display()))?;
            }
            if roots.is_empty() {
                anyhow::bail!("--tls-client-ca {}: no certificate in the file", ca.display());
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| anyhow::anyhow!("--tls-client-ca {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| anyhow::anyhow!("--tls-cert / --tls-key do not form a usable pair: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(api: &[&str], admin: &[&str]) -> Keys {
        Keys {
            api: api.iter().map(|k| Secret::new(*k)).collect(),
            admin: admin.iter().map(|k| Secret::new(*k)).collect(),
        }
    }

    const PREDICT: &str = "/torchwire.v1.Inference/Predict";
    const LOAD: &str = "/torchwire.v1.Admin/LoadModel";

    #[test]
    fn paths_are_classified() {
        assert_eq!(classify("/grpc.health.v1.Health/Check"), Access::Open);
        assert_eq!(classify("/inference.GRPCInferenceService/ServerLive"), Access::Open);
        assert_eq!(classify(PREDICT), Access::Inference);
        assert_eq!(classify("/torchwire.v1.Inference/Stats"), Access::Inference);
        assert_eq!(classify("/inference.GRPCInferenceService/ModelInfer"), Access::Inference);
        assert_eq!(classify("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"), Access::Inference);
        assert_eq!(classify("/torchwire.v1.Admin/ResetStats"), Access::Admin);
        assert_eq!(classify(LOAD), Access::Admin);
        assert_eq!(classify("/inference.GRPCInferenceService/RepositoryModelUnload"), Access::Admin);
        assert_eq!(classify("garbage"), Access::Inference);
    }

    #[test]
    fn tokens_open_what_they_should() {
        let k = keys(&["api-key-0123456789"], &["admin-key-0123456789"]);
        let api = Some(b"Bearer api-key-0123456789".as_slice());
        let admin = Some(b"Bearer admin-key-0123456789".as_slice());
        assert!(k.check(PREDICT, api).is_ok());
        assert!(k.check(PREDICT, admin).is_ok());
        assert!(k.check(LOAD, admin).is_ok());
        assert!(matches!(k.check(LOAD, api), Err(Error::PermissionDenied { .. })));
        assert!(matches!(k.check(PREDICT, None), Err(Error::Unauthenticated { .. })));
        assert!(matches!(k.check(PREDICT, Some(b"api-key-0123456789")), Err(Error::Unauthenticated { .. })));
        assert!(matches!(k.check(PREDICT, Some(b"Bearer api-key-012345678")), Err(Error::Unauthenticated { .. })));
        assert!(matches!(k.check(PREDICT, Some(b"Bearer api-key-01234567890")), Err(Error::Unauthenticated { .. })));
        assert!(k.check("/grpc.health.v1.Health/Check", None).is_ok());
    }

    #[test]
    fn without_keys_everything_is_open_and_admin_only_keys_leave_inference_open() {
        assert!(keys(&[], &[]).check(LOAD, None).is_ok());
        let k = keys(&[], &["admin-key-0123456789"]);
        assert!(k.check(PREDICT, None).is_ok());
        assert!(matches!(k.check(LOAD, None), Err(Error::Unauthenticated { .. })));
        // With API keys only, admin RPCs need an API key.
        let k = keys(&["api-key-0123456789"], &[]);
        assert!(k.check(LOAD, Some(b"Bearer api-key-0123456789")).is_ok());
        assert!(matches!(k.check(LOAD, None), Err(Error::Unauthenticated { .. })));
    }

    #[test]
    fn secrets_do_not_print_and_fingerprints_are_short() {
        let s = Secret::new("super-secret-value-123");
        assert!(!format!("{s:?}").contains("super"));
        assert_eq!(fingerprint(b"abc"), "ba7816bf");
        assert!(validate_keys(&[Secret::new("short")], "--api-key").is_err());
        assert!(validate_keys(&[Secret::new("has a space in it 123")], "--api-key").is_err());
        assert!(validate_keys(&[Secret::new("0123456789abcdef")], "--api-key").is_ok());
    }
}
