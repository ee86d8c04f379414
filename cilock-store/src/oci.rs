//! OCI distribution operations on a repository (blobs, manifests, the
//! referrers API), each with its bound, on top of [`crate::http`].

use reqwest::{Method, StatusCode, Url};

use crate::digest::{check_content_digest, truncate, verify_content};
use crate::http::{Answer, Body, Http, ACCEPT_MANIFESTS, MAX_MANIFEST_BYTES, OCI_INDEX};
use crate::StoreError;

/// A manifest read from the registry.
pub(crate) struct Manifest {
    pub(crate) bytes: Vec<u8>,
}

/// What a HEAD of a manifest says.
pub(crate) struct ManifestHead {
    pub(crate) media_type: String,
    pub(crate) size: u64,
}

/// What a manifest PUT answered.
pub(crate) struct PutManifest {
    /// The `OCI-Subject` header: the registry indexed the referrer.
    pub(crate) oci_subject: Option<String>,
}

impl Http {
    /// Whether the blob `digest` is in the repository.
    pub(crate) async fn blob_exists(&self, digest: &str) -> Result<bool, StoreError> {
        let path = self.repo_path(&format!("blobs/{digest}"));
        let a = self.send(Method::HEAD, &path, None, None, 0).await?;
        match a.status {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.status_error(&format!("HEAD {path}"), &a)),
        }
    }

    /// Uploads a blob (POST an upload, PUT it whole with its digest),
    /// unless it is there already.
    pub(crate) async fn put_blob(
        &self,
        digest: &str,
        bytes: bytes::Bytes,
    ) -> Result<(), StoreError> {
        if self.blob_exists(digest).await? {
            return Ok(());
        }
        let path = self.repo_path("blobs/uploads/");
        let a = self.send(Method::POST, &path, None, None, 0).await?;
        if a.status != StatusCode::ACCEPTED {
            return Err(self.status_error(&format!("POST {path}"), &a));
        }
        let location = a.header("Location").ok_or_else(|| {
            self.registry_error(format!("POST {path}: HTTP 202 without a Location"))
        })?;
        let base = Url::parse(&self.base_url()).map_err(|e| self.registry_error(e.to_string()))?;
        let mut upload = base
            .join(location)
            .map_err(|e| self.registry_error(format!("POST {path}: bad Location: {e}")))?;
        if upload.scheme() != base.scheme() || upload.host_str() != base.host_str() {
            // The upload goes to the registry that was asked, with its credentials.
            return Err(self.registry_error(format!(
                "POST {path}: the upload location points to another host ({})",
                truncate(upload.host_str().unwrap_or(""), 100)
            )));
        }
        upload.query_pairs_mut().append_pair("digest", digest);
        let body = Body {
            content_type: "application/octet-stream",
            bytes,
        };
        let a = self
            .send(Method::PUT, upload.as_str(), None, Some(&body), 0)
            .await?;
        if a.status != StatusCode::CREATED {
            return Err(self.status_error(&format!("PUT {path}… (blob {digest})"), &a));
        }
        Ok(())
    }

    /// Reads the blob `digest` of `size` bytes (at most `max`), checking
    /// its size and digest: a mismatch is an integrity error naming the blob.
    pub(crate) async fn get_blob(
        &self,
        digest: &str,
        size: u64,
        max: u64,
    ) -> Result<Vec<u8>, StoreError> {
        check_content_digest(digest).map_err(|e| self.integrity_error(e))?;
        if size > max {
            return Err(self.integrity_error(format!(
                "blob {digest}: its descriptor says {size} bytes, more than the {max} allowed"
            )));
        }
        let path = self.repo_path(&format!("blobs/{digest}"));
        let limit = usize::try_from(size).unwrap_or(usize::MAX);
        let a = match self.send(Method::GET, &path, None, None, limit).await {
            Err(StoreError::Integrity { .. }) => {
                return Err(self.integrity_error(format!(
                "blob {digest}: the registry sent more than the {size} bytes its descriptor says"
            )))
            }
            other => other?,
        };
        match a.status {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => {
                return Err(self.integrity_error(format!(
                    "blob {digest} is referenced but missing from the repository"
                )))
            }
            _ => return Err(self.status_error(&format!("GET {path}"), &a)),
        }
        if a.body.len() as u64 != size {
            return Err(self.integrity_error(format!(
                "blob {digest}: {} bytes read, its descriptor says {size}",
                a.body.len()
            )));
        }
        verify_content(digest, &a.body).map_err(|got| {
            self.integrity_error(format!(
                "blob {digest} does not match its digest: its content hashes to {got} (altered in the store)"
            ))
        })?;
        Ok(a.body)
    }

    /// HEAD of a manifest by digest or tag; `None` when absent.
    pub(crate) async fn head_manifest(
        &self,
        reference: &str,
    ) -> Result<Option<ManifestHead>, StoreError> {
        let path = self.repo_path(&format!("manifests/{reference}"));
        let a = self
            .send(Method::HEAD, &path, Some(ACCEPT_MANIFESTS), None, 0)
            .await?;
        match a.status {
            StatusCode::OK => {}
            // 400: a digest form the registry does not know (it has no such manifest).
            StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST => return Ok(None),
            _ => return Err(self.status_error(&format!("HEAD {path}"), &a)),
        }
        let media_type = a.header("Content-Type").unwrap_or("").to_string();
        let size = a
            .header("Content-Length")
            .and_then(|l| l.parse::<u64>().ok())
            .ok_or_else(|| self.registry_error(format!("HEAD {path}: no Content-Length")))?;
        if media_type.is_empty() {
            return Err(self.registry_error(format!("HEAD {path}: no Content-Type")));
        }
        Ok(Some(ManifestHead { media_type, size }))
    }

    /// GET of a manifest or index by digest or tag (at most 4 MiB); `None`
    /// when absent. By digest, the bytes are checked against it.
    pub(crate) async fn get_manifest(
        &self,
        reference: &str,
    ) -> Result<Option<Manifest>, StoreError> {
        let path = self.repo_path(&format!("manifests/{reference}"));
        let a = self
            .send(
                Method::GET,
                &path,
                Some(ACCEPT_MANIFESTS),
                None,
                MAX_MANIFEST_BYTES,
            )
            .await?;
        match a.status {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            _ => return Err(self.status_error(&format!("GET {path}"), &a)),
        }
        if reference.contains(':') {
            verify_content(reference, &a.body).map_err(|got| {
                self.integrity_error(format!(
                    "manifest {reference} does not match its digest: its content hashes to {got}"
                ))
            })?;
        }
        Ok(Some(Manifest { bytes: a.body }))
    }

    /// PUT of a manifest by digest or tag.
    pub(crate) async fn put_manifest(
        &self,
        reference: &str,
        media_type: &'static str,
        bytes: Vec<u8>,
    ) -> Result<PutManifest, StoreError> {
        let path = self.repo_path(&format!("manifests/{reference}"));
        let body = Body {
            content_type: media_type,
            bytes: bytes.into(),
        };
        let a = self.send(Method::PUT, &path, None, Some(&body), 0).await?;
        if a.status != StatusCode::CREATED && a.status != StatusCode::OK {
            return Err(self.status_error(&format!("PUT {path}"), &a));
        }
        Ok(PutManifest {
            oci_subject: a.header("OCI-Subject").map(str::to_string),
        })
    }

    /// The referrers API's index for `subject` (`ALG:HEX`); `None` when the
    /// registry answers 404 (no referrers API: use the tag schema).
    pub(crate) async fn get_referrers(&self, subject: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.repo_path(&format!("referrers/{subject}"));
        let a: Answer = self
            .send(
                Method::GET,
                &path,
                Some(OCI_INDEX),
                None,
                MAX_MANIFEST_BYTES,
            )
            .await?;
        match a.status {
            StatusCode::OK => Ok(Some(a.body)),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.status_error(&format!("GET {path}"), &a)),
        }
    }
}
