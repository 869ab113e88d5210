//! Outbound HTTP: the one builder every client that calls a third party starts from (the Kazaya
//! client, grant-request delivery to authorizers, the sandboxes' callbacks).
//!
//! - TLS is rustls with the webpki (Mozilla) roots, plus any roots named by configuration
//!   (`LATCH_EXTRA_CA_FILE`: PEM, one or more certificates), e.g. a company CA in front of
//!   Kazaya, or a test CA. Certificates are verified always; there is no switch to turn that off.
//! - Redirects are never followed: a third party answering 3xx gets no second request sent
//!   wherever it points (for the token endpoint that is oauth2's SSRF advice; for grant delivery
//!   it keeps a signed request from being bounced to a host the operator never registered).
//!
//! The roots are read once at start ([`TlsRoots::from_pem_file`]), so a broken file stops the
//! process with the file named instead of failing every call later.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Extra trust anchors added to the built-in webpki roots. Cheap to clone.
#[derive(Clone, Default)]
pub struct TlsRoots {
    extra: Arc<Vec<reqwest::Certificate>>,
    source: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsRootsError {
    #[error("extra CA file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("extra CA file {path}: not PEM certificates: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error(
        "extra CA file {path}: holds no certificate (expected PEM `BEGIN CERTIFICATE` blocks)"
    )]
    Empty { path: PathBuf },
}

impl TlsRoots {
    /// No extra roots: the webpki roots only.
    pub fn none() -> Self {
        Self::default()
    }

    /// Every certificate in a PEM file (a bundle may hold several).
    pub fn from_pem_file(path: impl AsRef<Path>) -> Result<Self, TlsRootsError> {
        let path = path.as_ref().to_path_buf();
        let pem = std::fs::read(&path).map_err(|source| TlsRootsError::Read {
            path: path.clone(),
            source,
        })?;
        let mut roots = Self::from_pem(&pem).map_err(|detail| TlsRootsError::Parse {
            path: path.clone(),
            detail,
        })?;
        if roots.is_empty() {
            return Err(TlsRootsError::Empty { path });
        }
        roots.source = Some(path);
        Ok(roots)
    }

    /// Every certificate in PEM text.
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| e.to_string())?;
        // Build a client with them now: rustls parses the certificates only when a client is
        // built, and a broken one must stop the process at start, not fail every call.
        let roots = Self {
            extra: Arc::new(certs),
            source: None,
        };
        client_builder(&roots).build().map_err(|e| e.to_string())?;
        Ok(roots)
    }

    pub fn len(&self) -> usize {
        self.extra.len()
    }

    pub fn is_empty(&self) -> bool {
        self.extra.is_empty()
    }
}

impl fmt::Debug for TlsRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsRoots")
            .field("extra", &self.extra.len())
            .field("source", &self.source)
            .finish()
    }
}

/// A reqwest builder for calls to third parties: rustls, webpki roots plus `roots`, no redirects.
/// Callers add their timeouts and build.
pub fn client_builder(roots: &TlsRoots) -> reqwest::ClientBuilder {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_webpki_certs(true)
        .redirect(reqwest::redirect::Policy::none());
    for cert in roots.extra.iter() {
        builder = builder.add_root_certificate(cert.clone());
    }
    builder
}

/// An error and its sources in one line ("error sending request for url (...): ... invalid peer
/// certificate: UnknownIssuer"), so a TLS failure says what was wrong with the certificate.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_missing_empty_or_not_pem_is_named() {
        let dir = std::env::temp_dir().join(format!("latch-roots-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let e = TlsRoots::from_pem_file(&missing).unwrap_err().to_string();
        assert!(e.contains("missing.pem"), "{e}");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        let e = TlsRoots::from_pem_file(&empty).unwrap_err().to_string();
        assert!(
            e.contains("empty.pem") && e.contains("no certificate"),
            "{e}"
        );
        let broken = dir.join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = TlsRoots::from_pem_file(&broken).unwrap_err().to_string();
        assert!(e.contains("broken.pem"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn without_extra_roots_the_builder_builds() {
        assert!(client_builder(&TlsRoots::none()).build().is_ok());
        assert_eq!(
            format!("{:?}", TlsRoots::none()),
            "TlsRoots { extra: 0, source: None }"
        );
    }
}
