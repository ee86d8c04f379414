//! The product attestor (`https://witness.dev/attestations/product/v0.1`,
//! stage product): files of the working directory that are new or changed
//! since the materials were recorded, with their MIME type.
//!
//! Subjects are `file:<relpath>`, filtered by the include/exclude globs.
//! As in Witness (go-witness PR #66), the globs filter subjects only: the
//! predicate lists every product.
//!
//! When the step was traced, each product says whether a step process
//! wrote it (`writtenByStep`, a cilock extension Witness readers ignore):
//! `true` when the file hashed is one a step process opened for writing
//! (same device and inode: a file written under a temporary name and
//! renamed into place counts), `false` for a file that appeared or changed
//! in the workdir without any step process writing it (another process,
//! outside the step, put it there). Absent when there was no trace.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::filetree::{self, PathFilter, SkippedPath};
use super::{AttestError, AttestationContext, Attestor, Stage};
use crate::digest::DigestSet;

/// Attestor name.
pub const NAME: &str = "product";

/// One product.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// MIME type (gabriel-vasile/mimetype names).
    pub mime_type: String,
    /// Digest of the file.
    pub digest: DigestSet,
    /// Whether a process of the traced step wrote this file (cilock
    /// extension; absent when the step was not traced).
    #[serde(
        default,
        rename = "writtenByStep",
        skip_serializing_if = "Option::is_none"
    )]
    pub written_by_step: Option<bool>,
}

/// What the processes of a traced step wrote, as the tracer saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepWrites {
    /// (device, inode) of every file a step process opened for writing
    /// (at its last write open of that path). The device is `st_dev`, or
    /// the superblock's device where the tracer recorded that one.
    #[serde(default)]
    pub files: BTreeSet<(u64, u64)>,
    /// Absolute paths a step process opened for writing whose identity the
    /// tracer could not record: a product there counts as written.
    #[serde(default)]
    pub paths: BTreeSet<String>,
    /// Every absolute path a step process opened for writing (identity
    /// known or not): the slsa attestor does not list what the step itself
    /// wrote among its dependencies.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub written_paths: BTreeSet<String>,
}

impl StepWrites {
    /// Whether the file with `meta` (found at `abs`, whose mount's
    /// superblock device is `sb_dev`) was written by the step.
    pub fn wrote(&self, meta: &std::fs::Metadata, sb_dev: Option<u64>, abs: &str) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        let ino = meta.ino();
        self.files.contains(&(meta.dev(), ino))
            || sb_dev.is_some_and(|d| self.files.contains(&(d, ino)))
            || self.paths.contains(abs)
    }
}

/// The product attestor.
#[derive(Debug)]
pub struct ProductAttestor {
    subject_filter: PathFilter,
    materials: Option<BTreeMap<String, DigestSet>>,
    products: BTreeMap<String, Product>,
    skipped: Vec<SkippedPath>,
}

impl ProductAttestor {
    /// A product attestor whose subjects pass `subject_filter`.
    pub fn new(subject_filter: PathFilter) -> Self {
        ProductAttestor {
            subject_filter,
            materials: None,
            products: BTreeMap::new(),
            skipped: Vec::new(),
        }
    }

    /// Sets the full material snapshot to compare against. Without it the
    /// `material` attestation recorded in the context is used.
    pub fn set_materials(&mut self, materials: BTreeMap<String, DigestSet>) {
        self.materials = Some(materials);
    }

    /// The products found by `attest`.
    pub fn products(&self) -> &BTreeMap<String, Product> {
        &self.products
    }

    /// Paths that could not be recorded, and why.
    pub fn skipped(&self) -> &[SkippedPath] {
        &self.skipped
    }
}

impl Attestor for ProductAttestor {
    fn name(&self) -> &'static str {
        NAME
    }
    fn stage(&self) -> Stage {
        Stage::Product
    }
    fn attest(&mut self, ctx: &AttestationContext) -> Result<serde_json::Value, AttestError> {
        let materials: BTreeMap<String, DigestSet> = match &self.materials {
            Some(m) => m.clone(),
            None => match ctx.completed_json(super::material::NAME) {
                Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
                    AttestError::Invalid(format!("product: cannot read materials: {e}"))
                })?,
                None => BTreeMap::new(),
            },
        };
        let hashes = filetree::hashes_for_files(&ctx.hashes)?;
        let writes = ctx.step_writes.as_ref();
        let mounts = super::safeio::MountDevs::default();
        let root = ctx
            .workdir
            .to_string_lossy()
            .trim_end_matches('/')
            .to_string();
        // One open per file: hashed, compared with the materials and, when
        // it is a product, sniffed for its MIME type from the same
        // descriptor.
        let out = filetree::walk_workdir(ctx, &|f: &filetree::WalkFile<'_>| {
            let digest = filetree::hash_walk_file(f, &hashes)?;
            if let Some(m) = materials.get(f.rel) {
                if m.matches(&digest) {
                    return Ok(None);
                }
            }
            let name = f.rel.rsplit('/').next().unwrap_or(f.rel);
            let written_by_step = writes.map(|w| {
                let sb = mounts
                    .sb_dev(f.file)
                    .filter(|&d| d != std::os::unix::fs::MetadataExt::dev(f.meta));
                w.wrote(f.meta, sb, &format!("{root}/{}", f.rel))
            });
            Ok(Some(Product {
                mime_type: detect_mime_fd(f.file, name),
                digest,
                written_by_step,
            }))
        })?;
        let products = out.files;
        let skipped = out.skipped;
        self.products = products;
        self.skipped = skipped;
        serde_json::to_value(&self.products)
            .map_err(|e| AttestError::Invalid(format!("product: {e}")))
    }

    fn subjects(&self) -> BTreeMap<String, DigestSet> {
        self.products
            .iter()
            .filter(|(rel, _)| self.subject_filter.matches(rel))
            .map(|(rel, p)| (format!("file:{rel}"), p.digest.clone()))
            .collect()
    }
}

/// MIME type of the file at `path` (`unknown` when it cannot be read, as
/// Witness does on a detection error). The path is opened non-blocking,
/// without following a link in its last component, regular files only.
pub fn detect_mime_file(path: &Path) -> String {
    match super::safeio::open_regular_nofollow(path) {
        Ok((f, _)) => {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            detect_mime_fd(&f, name.as_deref().unwrap_or(""))
        }
        Err(_) => "unknown".to_string(),
    }
}

/// Bytes of a file's start (and, for a longer file, of its end) read to
/// sniff its MIME type.
pub const SNIFF_BYTES: usize = 3072;

/// MIME type of an already opened file, from its first 3 KiB read with
/// `pread` (the file position is left alone), `unknown` on a read error.
/// For a longer file that starts like a JSON object, its last 3 KiB are
/// read too: tools that sort their keys write the SBOM and SARIF markers
/// last (`cyclonedx-py` ends its BOM with `"bomFormat": "CycloneDX"`).
pub fn detect_mime_fd(f: &std::fs::File, name: &str) -> String {
    let Ok(head) = read_at_most(f, 0, SNIFF_BYTES) else {
        return "unknown".to_string();
    };
    let mut tail = None;
    if head.len() == SNIFF_BYTES && starts_like_json_object(&head) {
        if let Ok(meta) = f.metadata() {
            let len = meta.len();
            if len > SNIFF_BYTES as u64 {
                // Overlapping the head is harmless; a gap could split a marker.
                let from = len.saturating_sub(SNIFF_BYTES as u64);
                match read_at_most(f, from, SNIFF_BYTES) {
                    Ok(t) => tail = Some(t),
                    Err(_) => return "unknown".to_string(),
                }
            }
        }
    }
    detect_mime_with_tail(&head, tail.as_deref(), name)
}

fn read_at_most(f: &std::fs::File, off: u64, max: usize) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; max];
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], off + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    buf.truncate(n);
    Ok(buf)
}

fn starts_like_json_object(head: &[u8]) -> bool {
    let h = head.strip_prefix("\u{feff}".as_bytes()).unwrap_or(head);
    h.iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'{')
}

fn elf_mime(head: &[u8]) -> &'static str {
    // e_type at offset 16, endianness at offset 5.
    if head.len() < 18 {
        return "application/x-elf";
    }
    let et = if head[5] == 2 {
        u16::from_be_bytes([head[16], head[17]])
    } else {
        u16::from_le_bytes([head[16], head[17]])
    };
    match et {
        1 => "application/x-object",
        2 => "application/x-executable",
        3 => "application/x-sharedlib",
        4 => "application/x-coredump",
        _ => "application/x-elf",
    }
}

/// MIME type of content starting with `head` (up to 3 KiB), with names as
/// gabriel-vasile/mimetype (the library Witness uses) gives them, plus
/// Witness's SPDX/CycloneDX/VEX extensions and SARIF (see
/// [`detect_mime_with_tail`]). `name` is the file name, used only to tell a
/// jar from a zip.
pub fn detect_mime(head: &[u8], name: &str) -> String {
    detect_mime_with_tail(head, None, name)
}

/// [`detect_mime`] for a file whose start is `head` and, when it is longer
/// than `head`, whose last bytes are `tail` (searched for the SBOM, VEX and
/// SARIF markers of a JSON object only).
///
/// The structured types, as go-witness's detectors
/// (`attestation/product/product.go`) with whitespace allowed around the
/// colon (pretty-printers write `"key": "value"`) and the marker allowed
/// anywhere in the head or the tail rather than in the first 500 bytes only:
/// - `"spdxVersion": "SPDX-` → `application/spdx+json`;
/// - `"bomFormat": "CycloneDX"` → `application/vnd.cyclonedx+json`;
/// - `"@context": "https://openvex.dev/ns` → `application/vex+json`;
/// - a `<bom xmlns="http://cyclonedx.org/schema/bom/…">` XML root →
///   `application/vnd.cyclonedx+xml`;
/// - SARIF (a cilock addition, not in go-witness): a `"$schema"` naming
///   `sarif`, or `"version": "2.1.0"` with a `"runs"` key →
///   `application/sarif+json`.
pub fn detect_mime_with_tail(head: &[u8], tail: Option<&[u8]>, name: &str) -> String {
    let magic: &[(&[u8], usize, &str)] = &[
        (b"%PDF-", 0, "application/pdf"),
        (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
        (b"\xff\xd8\xff", 0, "image/jpeg"),
        (b"GIF87a", 0, "image/gif"),
        (b"GIF89a", 0, "image/gif"),
        (b"\x1f\x8b", 0, "application/gzip"),
        (b"BZh", 0, "application/x-bzip2"),
        (b"\xfd7zXZ\x00", 0, "application/x-xz"),
        (b"\x28\xb5\x2f\xfd", 0, "application/zstd"),
        (b"7z\xbc\xaf\x27\x1c", 0, "application/x-7z-compressed"),
        (b"\x00asm", 0, "application/wasm"),
        (
            b"!<arch>\ndebian-binary",
            0,
            "application/vnd.debian.binary-package",
        ),
        (b"!<arch>\n", 0, "application/x-archive"),
        (b"\xed\xab\xee\xdb", 0, "application/x-rpm"),
        (b"\xcf\xfa\xed\xfe", 0, "application/x-mach-binary"),
        (b"\xce\xfa\xed\xfe", 0, "application/x-mach-binary"),
        (b"\xfe\xed\xfa\xcf", 0, "application/x-mach-binary"),
        (b"\xfe\xed\xfa\xce", 0, "application/x-mach-binary"),
        (b"\xca\xfe\xba\xbe", 0, "application/x-java-applet"),
        (b"ustar", 257, "application/x-tar"),
    ];
    if head.starts_with(b"\x7fELF") {
        return elf_mime(head).to_string();
    }
    if head.starts_with(b"MZ") {
        return "application/vnd.microsoft.portable-executable".to_string();
    }
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".jar") {
            return "application/jar".to_string();
        }
        return "application/zip".to_string();
    }
    for (sig, off, mime) in magic {
        if head.len() >= off + sig.len() && &head[*off..off + sig.len()] == *sig {
            return mime.to_string();
        }
    }
    if head.is_empty() {
        return "text/plain".to_string();
    }
    // Text: valid UTF-8 (allowing a character cut at the 3 KiB boundary)
    // without NUL or other binary control bytes.
    let text = match std::str::from_utf8(head) {
        Ok(s) => Some(s),
        Err(e) if e.error_len().is_none() => std::str::from_utf8(&head[..e.valid_up_to()]).ok(),
        Err(_) => None,
    };
    let Some(text) = text else {
        return "application/octet-stream".to_string();
    };
    if text
        .bytes()
        .any(|b| b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r' | 0x0c | 0x1b))
    {
        return "application/octet-stream".to_string();
    }
    let t = text.trim_start_matches('\u{feff}').trim_start();
    if t.starts_with("#!") {
        let first = t.lines().next().unwrap_or("");
        if first.contains("python") {
            return "text/x-python".to_string();
        }
        if first.contains("perl") {
            return "text/x-perl".to_string();
        }
        if first.contains("node") {
            return "text/javascript".to_string();
        }
        if first.contains("sh") {
            return "text/x-shellscript".to_string();
        }
    }
    if t.starts_with('{') || t.starts_with('[') {
        if let Some(m) = json_kind(t, head.len() < SNIFF_BYTES, tail) {
            return m.to_string();
        }
    }
    let lower_start: String = t.chars().take(64).collect::<String>().to_ascii_lowercase();
    if (lower_start.starts_with("<?xml") || lower_start.starts_with("<bom"))
        && markers().cdx_xml.is_match(t.as_bytes())
    {
        return "application/vnd.cyclonedx+xml".to_string();
    }
    if lower_start.starts_with("<?xml") {
        return "text/xml; charset=utf-8".to_string();
    }
    if lower_start.starts_with("<!doctype html") || lower_start.starts_with("<html") {
        return "text/html; charset=utf-8".to_string();
    }
    "text/plain; charset=utf-8".to_string()
}

struct Markers {
    spdx: regex::bytes::Regex,
    cdx: regex::bytes::Regex,
    vex: regex::bytes::Regex,
    sarif_schema: regex::bytes::Regex,
    sarif_version: regex::bytes::Regex,
    runs: regex::bytes::Regex,
    cdx_xml: regex::bytes::Regex,
}

fn markers() -> &'static Markers {
    static M: std::sync::OnceLock<Markers> = std::sync::OnceLock::new();
    M.get_or_init(|| {
        let re = |s: &str| regex::bytes::Regex::new(s).expect("a valid marker regex");
        Markers {
            spdx: re(r#""spdxVersion"\s*:\s*"SPDX-"#),
            cdx: re(r#""bomFormat"\s*:\s*"CycloneDX""#),
            vex: re(r#""@context"\s*:\s*"https://openvex\.dev/ns"#),
            sarif_schema: re(r#"(?i)"\$schema"\s*:\s*"[^"]*sarif[^"]*""#),
            sarif_version: re(r#""version"\s*:\s*"2\.1\.0""#),
            runs: re(r#""runs"\s*:"#),
            cdx_xml: re(r#"<bom\s[^>]*xmlns\s*=\s*["']https?://cyclonedx\.org/schema/bom/"#),
        }
    })
}

fn json_kind(t: &str, complete: bool, tail: Option<&[u8]>) -> Option<&'static str> {
    // A complete JSON document is checked by parsing; a truncated head is
    // accepted on its shape alone.
    let is_json = if complete {
        serde_json::from_str::<serde_json::Value>(t).is_ok()
    } else {
        t.starts_with('{') && t.contains("\":")
    };
    if !is_json {
        return None;
    }
    // Markers are keys of a JSON object: a document that is an array is
    // plain JSON.
    let m = markers();
    let head = t.as_bytes();
    let object = t.starts_with('{');
    let found = |re: &regex::bytes::Regex| {
        object && (re.is_match(head) || tail.is_some_and(|tl| re.is_match(tl)))
    };
    if found(&m.spdx) {
        return Some("application/spdx+json");
    }
    if found(&m.cdx) {
        return Some("application/vnd.cyclonedx+json");
    }
    if found(&m.vex) {
        return Some("application/vex+json");
    }
    if found(&m.sarif_schema) || (found(&m.sarif_version) && found(&m.runs)) {
        return Some(SARIF_MIME);
    }
    Some("application/json")
}

/// MIME type of a SARIF log (a cilock addition to Witness's detectors).
pub const SARIF_MIME: &str = "application/sarif+json";
/// MIME type of an SPDX JSON document.
pub const SPDX_MIME: &str = "application/spdx+json";
/// MIME type of a CycloneDX JSON BOM.
pub const CYCLONEDX_MIME: &str = "application/vnd.cyclonedx+json";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_are_marked_written_by_the_step_or_not() {
        use std::os::unix::fs::MetadataExt as _;
        let d = tempfile::tempdir().unwrap();
        let w = d.path();
        std::fs::write(w.join("built"), b"by the step\n").unwrap();
        std::fs::write(w.join("dropped"), b"by an outsider\n").unwrap();
        std::fs::write(w.join("by-path"), b"identity unknown\n").unwrap();
        let built = std::fs::metadata(w.join("built")).unwrap();
        let run = |writes: Option<StepWrites>| {
            let mut ctx = AttestationContext::new(w.to_path_buf(), Vec::new());
            ctx.step_writes = writes;
            let mut a = ProductAttestor::new(PathFilter::new(&[], &[]).unwrap());
            let v = a.attest(&ctx).unwrap();
            (v, a.products().clone())
        };
        // Not traced: no mark at all (Witness's shape exactly).
        let (v, _) = run(None);
        assert_eq!(
            v["built"].as_object().unwrap().keys().collect::<Vec<_>>(),
            ["digest", "mime_type"]
        );
        let mut writes = StepWrites::default();
        writes.files.insert((built.dev(), built.ino()));
        // A written file whose identity is another one's: not this file.
        writes.files.insert((
            built.dev() + 1,
            std::fs::metadata(w.join("dropped")).unwrap().ino(),
        ));
        writes.paths.insert(format!("{}/by-path", w.display()));
        let (v, p) = run(Some(writes));
        assert_eq!(v["built"]["writtenByStep"], true);
        assert_eq!(v["dropped"]["writtenByStep"], false);
        assert_eq!(v["by-path"]["writtenByStep"], true);
        assert_eq!(p["dropped"].written_by_step, Some(false));
        // Witness's product reader ({mime_type, digest}) still reads it.
        #[derive(Deserialize)]
        struct WitnessProduct {
            #[expect(
                dead_code,
                reason = "only its presence is checked: Witness's reader requires it"
            )]
            mime_type: String,
            digest: BTreeMap<String, String>,
        }
        let back: BTreeMap<String, WitnessProduct> = serde_json::from_value(v).unwrap();
        assert_eq!(back.len(), 3);
        assert!(back["dropped"].digest.contains_key("sha256"));
    }

    #[test]
    fn markers_written_last_are_found_in_the_tail() {
        // cyclonedx-py sorts its keys: bomFormat comes after the components.
        let d = tempfile::tempdir().unwrap();
        let mut bom = String::from("{\n  \"components\": [\n");
        for i in 0..200 {
            bom.push_str(&format!(
                "    {{\"name\": \"p{i}\", \"version\": \"1.0\"}},\n"
            ));
        }
        bom.push_str("    {\"name\": \"last\"}\n  ],\n  \"bomFormat\": \"CycloneDX\",\n  \"specVersion\": \"1.6\"\n}\n");
        assert!(bom.len() > 2 * SNIFF_BYTES);
        std::fs::write(d.path().join("bom.json"), &bom).unwrap();
        assert_eq!(detect_mime_file(&d.path().join("bom.json")), CYCLONEDX_MIME);
        // Only the head: plain JSON.
        assert_eq!(
            detect_mime(&bom.as_bytes()[..SNIFF_BYTES], "bom.json"),
            "application/json"
        );
        // A long JSON array is never looked at from its end.
        let arr = format!("[{}\"bomFormat\": \"CycloneDX\"]", "1, ".repeat(2000));
        std::fs::write(d.path().join("a.json"), &arr).unwrap();
        assert_ne!(detect_mime_file(&d.path().join("a.json")), CYCLONEDX_MIME);
    }

    #[test]
    fn mime_types() {
        assert_eq!(
            detect_mime(b"hello\n", "a.txt"),
            "text/plain; charset=utf-8"
        );
        assert_eq!(detect_mime(b"", "e"), "text/plain");
        assert_eq!(detect_mime(b"{\"a\": 1}", "x.json"), "application/json");
        assert_eq!(
            detect_mime(b"{\"spdxVersion\": \"SPDX-2.3\"}", "s.json"),
            "application/spdx+json"
        );
        assert_eq!(detect_mime(b"#!/bin/sh\necho", "s"), "text/x-shellscript");
        assert_eq!(
            detect_mime(b"{\"spdxVersion\":\"SPDX-2.3\",\"name\":\"d\"}", "s"),
            SPDX_MIME
        );
        // The key alone is not SPDX (go-witness requires the SPDX- value).
        assert_eq!(
            detect_mime(b"{\"spdxVersion\": 2}", "s"),
            "application/json"
        );
        assert_eq!(
            detect_mime(
                b"{\n  \"bomFormat\" :\t\"CycloneDX\",\"specVersion\":\"1.6\"}",
                "b"
            ),
            CYCLONEDX_MIME
        );
        assert_eq!(
            detect_mime(b"{\"bomFormat\":\"Other\"}", "b"),
            "application/json"
        );
        // A marker inside a string value is escaped: not a key.
        assert_eq!(
            detect_mime(b"{\"note\":\"\\\"bomFormat\\\": \\\"CycloneDX\\\"\"}", "b"),
            "application/json"
        );
        assert_eq!(
            detect_mime(b"[{\"bomFormat\":\"CycloneDX\"}]", "b"),
            "application/json"
        );
        assert_eq!(
            detect_mime(
                b"{\"@context\": \"https://openvex.dev/ns/v0.2.0\", \"statements\": []}",
                "v"
            ),
            "application/vex+json"
        );
        // Mentioning openvex is not being a VEX document.
        assert_eq!(
            detect_mime(b"{\"url\": \"https://openvex.dev\"}", "v"),
            "application/json"
        );
        assert_eq!(
            detect_mime(
                b"{\"$schema\": \"https://json.schemastore.org/sarif-2.1.0.json\", \"runs\": []}",
                "r"
            ),
            SARIF_MIME
        );
        assert_eq!(
            detect_mime(b"{\"version\": \"2.1.0\", \"runs\": []}", "r"),
            SARIF_MIME
        );
        assert_eq!(
            detect_mime(b"{\"version\": \"2.1.0\"}", "r"),
            "application/json"
        );
        assert_eq!(
            detect_mime(
                b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<bom xmlns=\"http://cyclonedx.org/schema/bom/1.6\" version=\"1\"></bom>",
                "b.xml"
            ),
            "application/vnd.cyclonedx+xml"
        );
        assert_eq!(
            detect_mime(b"<?xml version=\"1.0\"?><a>cyclonedx.org</a>", "a.xml"),
            "text/xml; charset=utf-8"
        );
        assert_eq!(detect_mime(b"\x1f\x8b\x08\x00", "a.gz"), "application/gzip");
        assert_eq!(detect_mime(b"PK\x03\x04rest", "a.zip"), "application/zip");
        assert_eq!(
            detect_mime(b"\x00\x01\x02\x03", "b"),
            "application/octet-stream"
        );
        let mut elf = b"\x7fELF\x02\x01\x01\x00".to_vec();
        elf.resize(16, 0);
        elf.extend_from_slice(&[2, 0]);
        assert_eq!(detect_mime(&elf, "app"), "application/x-executable");
        elf[16] = 3;
        assert_eq!(detect_mime(&elf, "lib.so"), "application/x-sharedlib");
    }
}
