//! The oci attestor (`https://witness.dev/attestations/oci/v0.1`): a
//! `docker save` tarball among the products, recorded in go-witness's shape
//! (`attestation/oci/oci.go`).
//!
//! The image is the first product, in path order, whose MIME type is
//! `application/x-tar` and that holds a top-level `manifest.json` (the
//! `docker save` / `docker-archive` format; Docker 25+ writes it next to
//! an OCI layout, both are read). The tarball is streamed once, beneath the
//! working directory, never extracted: every regular entry is hashed as it
//! passes (a gzip-compressed one also decompressed and hashed: its diff
//! id), small JSON entries are kept, and the whole stream is hashed too and
//! must equal the product digest, so everything recorded is provably from
//! the file the product attestor hashed.
//!
//! ```text
//! {
//!   "tardigest": {"sha256": …},          // the product digest
//!   "manifest": [{"Config": …, "RepoTags": [..], "Layers": [..]}],
//!   "imagetags": ["name:tag", …],        // manifest[0].RepoTags ([] if none)
//!   "diffids": [{"sha256": …}, …],       // manifest[0]'s layers, in order
//!   "imageid": {"sha256": …},            // digest of manifest[0]'s config
//!   "manifestraw": "<base64 of manifest.json>",
//!   "manifestdigest": {"sha256": …}
//! }
//! ```
//!
//! Subjects, as Witness names them: `tardigest:<sha256>`,
//! `manifestdigest:<sha256>`, `imageid:<sha256>`, `imagetag:<tag>` (sha256
//! of the tag; a tag longer than [`MAX_TAG_SUBJECT_BYTES`] is not made a
//! subject) and `layerdiffidNN:<sha256>` (NN the layer's index, two
//! digits). Differences from go-witness: the diff ids follow the manifest's
//! layer order (go-witness follows the order of the tar entries, which in
//! an OCI-layout `docker save` is digest order); the image's digests are
//! sha256 (the OCI digest), the tar digest uses the step's hashes; the
//! diff ids must equal the config's `rootfs.diff_ids` and a layer that is
//! neither a tar nor gzip is refused rather than hashed as it is.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::lifecycle::AttestorOptions;
use super::{filetree, product_files};
use super::{AttestError, AttestationContext, Attestor, Stage};
use crate::digest::{DigestSet, HashAlg, HashingReader};

/// Attestor name.
pub const NAME: &str = "oci";
/// MIME type of a candidate tarball.
pub const TAR_MIME: &str = "application/x-tar";
/// Most tar entries read.
pub const MAX_ENTRIES: usize = 100_000;
/// Largest JSON entry kept (manifest.json, image configs), in bytes.
pub const MAX_JSON_ENTRY_BYTES: u64 = 4 << 20;
/// Most bytes of JSON entries kept in all.
pub const MAX_KEPT_BYTES: u64 = 32 << 20;
/// Most bytes decompressed from gzip layers in all (a gzip bomb stops
/// here).
pub const MAX_DECOMPRESSED_BYTES: u64 = 16 << 30;
/// Most images in manifest.json, and most layers of the one recorded.
pub const MAX_MANIFESTS: usize = 1024;
/// Most layers of the recorded image.
pub const MAX_LAYERS: usize = 1024;
/// Most tags of the recorded image.
pub const MAX_TAGS: usize = 1024;
/// Longest tag made a subject, in bytes (a longer one is recorded in
/// `imagetags` only).
pub const MAX_TAG_SUBJECT_BYTES: usize = 1024;

const SHA256: &[HashAlg] = &[HashAlg::Sha256];

/// One image of `manifest.json` (the fields go-witness keeps).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The config entry's name.
    #[serde(rename = "Config")]
    pub config: String,
    /// `name:tag` references.
    #[serde(rename = "RepoTags", default)]
    pub repo_tags: Option<Vec<String>>,
    /// The layer entries' names, base layer first.
    #[serde(rename = "Layers", default)]
    pub layers: Vec<String>,
}

/// What one pass over a tarball saw.
#[derive(Debug, Default)]
struct Scan {
    /// Entry name → (digest of its bytes, digest of its decompressed bytes
    /// when it is gzip).
    digests: BTreeMap<String, (DigestSet, Option<DigestSet>)>,
    /// JSON entries kept (name → bytes).
    json: BTreeMap<String, Vec<u8>>,
    /// Whether an entry's bytes start like a tar (`ustar` at 257).
    is_tar: BTreeMap<String, bool>,
    /// Link entries (name → the entry they name): the legacy layout's
    /// `<id>/layer.tar` links to the layer (`skopeo` writes them).
    links: BTreeMap<String, String>,
}

impl Scan {
    /// The regular entry `name` is, following at most 8 links.
    fn resolve<'a>(&'a self, mut name: &'a str) -> &'a str {
        for _ in 0..8 {
            match self.links.get(name) {
                Some(t) => name = t,
                None => break,
            }
        }
        name
    }
}

/// `target` of a link entry `name`, as an entry name (symbolic links are
/// relative to the entry's directory, hard links to the archive root);
/// `None` when it leaves the archive.
fn link_target(name: &str, target: &str, symbolic: bool) -> Option<String> {
    let mut parts: Vec<&str> = if symbolic && !target.starts_with('/') {
        let mut p: Vec<&str> = name.split('/').collect();
        p.pop();
        p
    } else {
        Vec::new()
    };
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// The oci attestor.
#[derive(Debug)]
pub struct OciAttestor {
    subjects: BTreeMap<String, DigestSet>,
}

impl OciAttestor {
    /// Built from the options of the step.
    pub fn new(_opts: &AttestorOptions) -> Result<Self, AttestError> {
        Ok(OciAttestor {
            subjects: BTreeMap::new(),
        })
    }
}

fn entry_name(p: &Path) -> String {
    let s = p.to_string_lossy();
    s.strip_prefix("./").unwrap_or(&s).to_string()
}

/// Hashes one entry of `size` bytes; keeps it when it is small JSON.
fn scan_entry(
    name: String,
    size: u64,
    r: impl Read,
    scan: &mut Scan,
    kept: &mut u64,
    inflated: &mut u64,
) -> Result<(), String> {
    let mut raw = HashingReader::new(r, size, SHA256);
    let mut head = Vec::with_capacity(512);
    (&mut raw)
        .take(512)
        .read_to_end(&mut head)
        .map_err(|e| format!("{name}: {e}"))?;
    let head = &head[..];
    let gzip = head.starts_with(b"\x1f\x8b");
    let json_like = head
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'{' || b == b'[');
    scan.is_tar.insert(
        name.clone(),
        head.len() >= 262 && &head[257..262] == b"ustar",
    );
    let mut inflated_digest = None;
    if gzip {
        let budget = MAX_DECOMPRESSED_BYTES.saturating_sub(*inflated);
        let mut dec =
            flate2::read::GzDecoder::new(std::io::Cursor::new(head.to_vec()).chain(&mut raw))
                .take(budget.saturating_add(1));
        // The decompressed length is not known first: sha256 streams.
        let d = DigestSet::from_reader(&mut dec, SHA256)
            .map_err(|e| format!("{name}: not a valid gzip stream: {e}"))?;
        let used = dec.limit();
        let got = budget.saturating_add(1) - used;
        if got > budget {
            return Err(format!(
                "{name}: the layers decompress to more than {MAX_DECOMPRESSED_BYTES} bytes"
            ));
        }
        *inflated += got;
        inflated_digest = Some(d);
    } else if json_like && size <= MAX_JSON_ENTRY_BYTES && *kept + size <= MAX_KEPT_BYTES {
        let mut body = head.to_vec();
        raw.read_to_end(&mut body)
            .map_err(|e| format!("{name}: {e}"))?;
        *kept += body.len() as u64;
        scan.json.insert(name.clone(), body);
    }
    let d = raw.finish().map_err(|e| format!("{name}: {e}"))?;
    scan.digests.insert(name, (d, inflated_digest));
    Ok(())
}

/// Streams the tarball `rel` (product digest `recorded`) once.
fn scan_tarball(ctx: &AttestationContext, rel: &str, recorded: &DigestSet) -> Result<Scan, String> {
    let (f, len) = product_files::open_product(ctx, rel)?;
    let algs = filetree::hashes_for_files(&ctx.hashes).map_err(|e| e.to_string())?;
    let mut ar = tar::Archive::new(HashingReader::new(&f, len, &algs));
    let mut scan = Scan::default();
    let (mut kept, mut inflated) = (0u64, 0u64);
    let entries = ar
        .entries()
        .map_err(|e| format!("not a tar archive: {e}"))?;
    for (i, e) in entries.enumerate() {
        if i >= MAX_ENTRIES {
            return Err(format!("more than {MAX_ENTRIES} entries"));
        }
        let e = e.map_err(|e| format!("not a valid tar archive: {e}"))?;
        let kind = e.header().entry_type();
        let name = entry_name(&e.path().map_err(|e| format!("an entry's name: {e}"))?);
        if kind.is_symlink() || kind.is_hard_link() {
            let target = e
                .link_name()
                .map_err(|e| format!("{name}: a link's target: {e}"))?
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Some(t) = link_target(&name, &target, kind.is_symlink()) {
                scan.links.insert(name, t);
            }
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        let size = e.size();
        scan_entry(name, size, e, &mut scan, &mut kept, &mut inflated)?;
    }
    let now = ar
        .into_inner()
        .finish()
        .map_err(|e| format!("cannot read: {e}"))?;
    if !recorded.matches(&now) {
        return Err("changed since the product attestor hashed it".into());
    }
    Ok(scan)
}

fn hex_of(d: &DigestSet) -> &str {
    d.get_sha256().unwrap_or_default()
}

impl Attestor for OciAttestor {
    fn name(&self) -> &'static str {
        NAME
    }
    fn stage(&self) -> Stage {
        Stage::PostProduct
    }
    fn attest(&mut self, ctx: &AttestationContext) -> Result<Value, AttestError> {
        let products = product_files::products(ctx)?;
        let tars: Vec<_> = products
            .iter()
            .filter(|(_, p)| p.mime_type == TAR_MIME)
            .collect();
        let mut found = None;
        let mut not_tar = Vec::new();
        for (rel, p) in &tars {
            match scan_tarball(ctx, rel, &p.digest) {
                Ok(scan) if scan.json.contains_key(scan.resolve("manifest.json")) => {
                    found = Some((rel.as_str(), *p, scan));
                    break;
                }
                Ok(_) => {}
                Err(e) => not_tar.push(format!("{rel}: {e}")),
            }
        }
        let Some((rel, product, scan)) = found else {
            if let Some(e) = not_tar.into_iter().next() {
                return Err(AttestError::Invalid(format!("oci: {e}")));
            }
            return Err(AttestError::Absent(format!(
                "oci: none of the {} products is a docker save tarball ({} tar files, none with a manifest.json)",
                products.len(),
                tars.len()
            )));
        };
        let bad = |m: String| AttestError::Invalid(format!("oci: {rel}: {m}"));
        let raw = &scan.json[scan.resolve("manifest.json")];
        let manifest: Vec<Manifest> =
            serde_json::from_slice(raw).map_err(|e| bad(format!("manifest.json: {e}")))?;
        if manifest.len() > MAX_MANIFESTS {
            return Err(bad(format!(
                "manifest.json lists {} images, more than {MAX_MANIFESTS}",
                manifest.len()
            )));
        }
        let Some(m) = manifest.first() else {
            return Err(bad("manifest.json lists no image".into()));
        };
        if m.layers.len() > MAX_LAYERS {
            return Err(bad(format!(
                "{} layers, more than {MAX_LAYERS}",
                m.layers.len()
            )));
        }
        let config_name = scan.resolve(m.config.strip_prefix("./").unwrap_or(&m.config));
        let config_bytes = scan
            .json
            .get(config_name)
            .ok_or_else(|| bad(format!("no config entry {:?} (or not JSON)", m.config)))?;
        let image_id = DigestSet::from_bytes(config_bytes, SHA256);
        let config: Value = serde_json::from_slice(config_bytes)
            .map_err(|e| bad(format!("config {}: {e}", m.config)))?;
        let mut diff_ids = Vec::new();
        for l in &m.layers {
            let name = scan.resolve(l.strip_prefix("./").unwrap_or(l));
            let Some((d, inflated)) = scan.digests.get(name) else {
                return Err(bad(format!("no layer entry {l:?}")));
            };
            match inflated {
                Some(i) => diff_ids.push(i.clone()),
                None if scan.is_tar.get(name) == Some(&true) => diff_ids.push(d.clone()),
                None => return Err(bad(format!("layer {l:?} is neither a tar nor gzip"))),
            }
        }
        if let Some(want) = config
            .get("rootfs")
            .and_then(|r| r.get("diff_ids"))
            .and_then(Value::as_array)
        {
            let got: Vec<String> = diff_ids
                .iter()
                .map(|d| format!("sha256:{}", hex_of(d)))
                .collect();
            let want: Vec<&str> = want.iter().filter_map(Value::as_str).collect();
            if got != want {
                return Err(bad(format!(
                    "the layers' diff ids {got:?} are not the config's rootfs.diff_ids {want:?}"
                )));
            }
        }
        let manifest_digest = DigestSet::from_bytes(raw, SHA256);
        let tags = m.repo_tags.clone().unwrap_or_default();
        if tags.len() > MAX_TAGS {
            return Err(bad(format!("{} tags, more than {MAX_TAGS}", tags.len())));
        }

        let mut s = BTreeMap::new();
        s.insert(
            format!("tardigest:{}", hex_of(&product.digest)),
            product.digest.clone(),
        );
        s.insert(
            format!("manifestdigest:{}", hex_of(&manifest_digest)),
            manifest_digest.clone(),
        );
        s.insert(format!("imageid:{}", hex_of(&image_id)), image_id.clone());
        for t in tags.iter().filter(|t| t.len() <= MAX_TAG_SUBJECT_BYTES) {
            s.insert(
                format!("imagetag:{t}"),
                DigestSet::from_bytes(t.as_bytes(), SHA256),
            );
        }
        for (i, d) in diff_ids.iter().enumerate() {
            s.insert(format!("layerdiffid{i:02}:{}", hex_of(d)), d.clone());
        }
        self.subjects = s;
        Ok(json!({
            "tardigest": product.digest,
            "manifest": manifest,
            "imagetags": tags,
            "diffids": diff_ids,
            "imageid": image_id,
            "manifestraw": base64::engine::general_purpose::STANDARD.encode(raw),
            "manifestdigest": manifest_digest,
        }))
    }
    fn subjects(&self) -> BTreeMap<String, DigestSet> {
        self.subjects.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decompression_stops_at_the_bound() {
        use std::io::Write as _;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(&[0u8; 1000]).unwrap();
        let gz = e.finish().unwrap();
        let mut scan = Scan::default();
        let mut kept = 0;
        // 999 bytes of the budget left: the 1000-byte layer is refused.
        let mut inflated = MAX_DECOMPRESSED_BYTES - 999;
        let err = scan_entry(
            "l".into(),
            gz.len() as u64,
            &gz[..],
            &mut scan,
            &mut kept,
            &mut inflated,
        )
        .unwrap_err();
        assert_eq!(
            err,
            format!("l: the layers decompress to more than {MAX_DECOMPRESSED_BYTES} bytes")
        );
        // 1000 left: it fits, and its diff id is the digest of the zeros.
        let mut inflated = MAX_DECOMPRESSED_BYTES - 1000;
        scan_entry(
            "l".into(),
            gz.len() as u64,
            &gz[..],
            &mut scan,
            &mut kept,
            &mut inflated,
        )
        .unwrap();
        assert_eq!(inflated, MAX_DECOMPRESSED_BYTES);
        assert_eq!(
            scan.digests["l"].1,
            Some(DigestSet::from_bytes(&[0u8; 1000], SHA256))
        );
        // Not gzip after its magic: an error naming the entry.
        let bad = b"\x1f\x8bnot really gzip";
        let err = scan_entry(
            "b".into(),
            bad.len() as u64,
            &bad[..],
            &mut scan,
            &mut kept,
            &mut 0,
        )
        .unwrap_err();
        assert!(err.starts_with("b: not a valid gzip stream"), "{err}");
    }

    #[test]
    fn link_targets_stay_in_the_archive() {
        assert_eq!(
            link_target("abc/layer.tar", "../f00.tar", true).as_deref(),
            Some("f00.tar")
        );
        assert_eq!(
            link_target("abc/layer.tar", "f00.tar", false).as_deref(),
            Some("f00.tar")
        );
        assert_eq!(
            link_target("a/b/l", "./c/../d", true).as_deref(),
            Some("a/b/d")
        );
        assert_eq!(link_target("l", "../../etc/passwd", true), None);
        let mut s = Scan::default();
        s.links.insert("a".into(), "b".into());
        s.links.insert("b".into(), "a".into());
        // A loop ends after a bounded number of steps.
        assert!(["a", "b"].contains(&s.resolve("a")));
    }
}
