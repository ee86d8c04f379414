//! A real PKI and a real RFC 3161 TSA made with the `openssl` CLI, for
//! tests: CA → intermediate → leaf chains (leaves issued with `openssl ca`,
//! so their validity can be set to the second) and TimeStampTokens made by
//! `openssl ts -reply`. Shared by cilock-evidence's and cilock-cli's tests
//! (through the testkit).

use std::path::{Path, PathBuf};
use std::process::Command;

use time::OffsetDateTime;

/// Runs openssl in `dir`; panics with its output on failure.
pub fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `YYYYMMDDHHMMSSZ` for `openssl ca -startdate/-enddate`.
pub fn asn1_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A certificate and its key, as files in the PKI directory.
#[derive(Clone, Debug)]
pub struct Issued {
    /// Base name (`NAME.pem`, `NAME.key`).
    pub name: String,
    /// Certificate PEM path.
    pub cert: PathBuf,
    /// Private key PEM path (PKCS#8).
    pub key: PathBuf,
}

impl Issued {
    /// The certificate PEM text.
    pub fn pem(&self) -> Vec<u8> {
        std::fs::read(&self.cert).unwrap()
    }

    /// The private key PEM text.
    pub fn key_pem(&self) -> Vec<u8> {
        std::fs::read(&self.key).unwrap()
    }
}

/// A directory of openssl-made certificates.
pub struct Pki {
    /// Where everything lives.
    pub dir: PathBuf,
    counter: std::cell::Cell<u32>,
}

const CA_EXT: &str = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n";

impl Pki {
    /// A PKI in `dir` (which must exist).
    pub fn new(dir: &Path) -> Pki {
        Pki {
            dir: dir.to_path_buf(),
            counter: std::cell::Cell::new(0),
        }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn key(&self, name: &str) -> PathBuf {
        let key = self.path(&format!("{name}.key"));
        openssl(
            &self.dir,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                key.to_str().unwrap(),
            ],
        );
        key
    }

    /// A self-signed root CA (valid ten years).
    pub fn root(&self, name: &str, subject: &str) -> Issued {
        let key = self.key(name);
        let cert = self.path(&format!("{name}.pem"));
        let ext = self.path(&format!("{name}.ext"));
        std::fs::write(&ext, CA_EXT).unwrap();
        openssl(
            &self.dir,
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                key.to_str().unwrap(),
                "-subj",
                subject,
                "-days",
                "3650",
                "-sha256",
                "-extensions",
                "v3_ca_x",
                "-config",
                self.req_config(&ext).to_str().unwrap(),
                "-out",
                cert.to_str().unwrap(),
            ],
        );
        Issued {
            name: name.into(),
            cert,
            key,
        }
    }

    fn req_config(&self, ext: &Path) -> PathBuf {
        let cfg = self.path(&format!(
            "{}.req.cnf",
            ext.file_stem().unwrap().to_str().unwrap()
        ));
        let body = std::fs::read_to_string(ext).unwrap();
        std::fs::write(
            &cfg,
            format!("[req]\ndistinguished_name=dn\n[dn]\n[v3_ca_x]\n{body}"),
        )
        .unwrap();
        cfg
    }

    /// A certificate for a new key, issued by `issuer` with `openssl ca`,
    /// valid from `not_before` to `not_after`, with the extensions in
    /// `ext` (openssl extension-file syntax).
    pub fn issue(
        &self,
        name: &str,
        subject: &str,
        issuer: &Issued,
        ext: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Issued {
        let key = self.key(name);
        let csr = self.path(&format!("{name}.csr"));
        openssl(
            &self.dir,
            &[
                "req",
                "-new",
                "-key",
                key.to_str().unwrap(),
                "-subj",
                subject,
                "-config",
                self.req_config(&self.write(&format!("{name}.csrext"), ""))
                    .to_str()
                    .unwrap(),
                "-out",
                csr.to_str().unwrap(),
            ],
        );
        let n = self.counter.get() + 1;
        self.counter.set(n);
        let db = self.path(&format!("ca{n}"));
        std::fs::create_dir_all(db.join("new")).unwrap();
        std::fs::write(db.join("index.txt"), "").unwrap();
        std::fs::write(
            db.join("serial"),
            format!("{:02X}{:014X}\n", n, rand_u64() >> 8),
        )
        .unwrap();
        let cfg = self.write(
            &format!("{name}.ca.cnf"),
            &format!(
                "[ca]\ndefault_ca=d\n[d]\ndir={}\ndatabase=$dir/index.txt\nnew_certs_dir=$dir/new\nserial=$dir/serial\ndefault_md=sha256\npolicy=p\nunique_subject=no\ncopy_extensions=none\n[p]\ncommonName=optional\norganizationName=optional\n[x]\n{ext}\n",
                db.display()
            ),
        );
        let cert = self.path(&format!("{name}.pem"));
        openssl(
            &self.dir,
            &[
                "ca",
                "-batch",
                "-notext",
                "-preserveDN",
                "-config",
                cfg.to_str().unwrap(),
                "-extensions",
                "x",
                "-cert",
                issuer.cert.to_str().unwrap(),
                "-keyfile",
                issuer.key.to_str().unwrap(),
                "-startdate",
                &asn1_time(not_before),
                "-enddate",
                &asn1_time(not_after),
                "-in",
                csr.to_str().unwrap(),
                "-out",
                cert.to_str().unwrap(),
            ],
        );
        Issued {
            name: name.into(),
            cert,
            key,
        }
    }

    /// An intermediate CA under `issuer`, valid ten years around now.
    pub fn intermediate(&self, name: &str, subject: &str, issuer: &Issued) -> Issued {
        let now = OffsetDateTime::now_utc();
        self.issue(
            name,
            subject,
            issuer,
            &format!("{CA_EXT}authorityKeyIdentifier=keyid\n"),
            now - time::Duration::days(1),
            now + time::Duration::days(3650),
        )
    }

    /// A TSA certificate under `issuer` (EKU timeStamping, critical unless
    /// `critical_eku` is false).
    /// Its subject is `/CN=<cn>/O=cilock test TSA`.
    pub fn tsa(&self, name: &str, cn: &str, issuer: &Issued, critical_eku: bool) -> Issued {
        let now = OffsetDateTime::now_utc();
        self.issue(
            name,
            &format!("/CN={cn}/O=cilock test TSA"),
            issuer,
            &format!(
                "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,nonRepudiation\nextendedKeyUsage={}timeStamping\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
                if critical_eku { "critical," } else { "" }
            ),
            now - time::Duration::days(1),
            now + time::Duration::days(3650),
        )
    }

    /// Writes a file in the PKI directory.
    pub fn write(&self, file: &str, body: &str) -> PathBuf {
        let p = self.path(file);
        std::fs::write(&p, body).unwrap();
        p
    }

    /// A DER TimeStampToken over `data` (hashed with `digest`, e.g.
    /// `sha256`) from the TSA `tsa`; `chain` is what the token carries
    /// (`certs` in the TSA config; the signer certificate is included when
    /// `include_certs`), `ess_alg` the ESS cert id hash (`sha1` → v1,
    /// `sha256` → v2).
    pub fn timestamp(
        &self,
        tsa: &Issued,
        chain: &[&Issued],
        data: &[u8],
        digest: &str,
        include_certs: bool,
        ess_alg: &str,
    ) -> Vec<u8> {
        let n = self.counter.get() + 1;
        self.counter.set(n);
        let data_file = self.path(&format!("ts{n}.data"));
        std::fs::write(&data_file, data).unwrap();
        let chain_file = self.path(&format!("ts{n}.chain.pem"));
        let mut chain_pem = Vec::new();
        for c in chain {
            chain_pem.extend(c.pem());
        }
        std::fs::write(&chain_file, chain_pem).unwrap();
        let serial = self.path(&format!("ts{n}.serial"));
        std::fs::write(&serial, "01\n").unwrap();
        let cfg = self.write(
            &format!("ts{n}.cnf"),
            &format!(
                "[tsa]\ndefault_tsa=t\n[t]\nserial={}\ncrypto_device=builtin\nsigner_cert={}\n{}signer_key={}\nsigner_digest=sha256\ndefault_policy=1.2.3.4.1\ndigests=sha256,sha384,sha512\naccuracy=secs:1\nordering=no\ntsa_name=yes\ness_cert_id_chain=no\ness_cert_id_alg={ess_alg}\n",
                serial.display(),
                tsa.cert.display(),
                if chain.is_empty() {
                    String::new()
                } else {
                    format!("certs={}\n", chain_file.display())
                },
                tsa.key.display(),
            ),
        );
        let query = self.path(&format!("ts{n}.tsq"));
        let mut q = vec![
            "ts",
            "-query",
            "-data",
            data_file.to_str().unwrap(),
            "-out",
            query.to_str().unwrap(),
        ];
        let dig = format!("-{digest}");
        q.push(&dig);
        if include_certs {
            q.push("-cert");
        }
        openssl(&self.dir, &q);
        let token = self.path(&format!("ts{n}.tst"));
        openssl(
            &self.dir,
            &[
                "ts",
                "-reply",
                "-config",
                cfg.to_str().unwrap(),
                "-queryfile",
                query.to_str().unwrap(),
                "-token_out",
                "-out",
                token.to_str().unwrap(),
            ],
        );
        std::fs::read(token).unwrap()
    }
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    u64::from_le_bytes(b)
}

/// The leaf extensions of a Fulcio-like signing certificate: SAN URI,
/// email and DNS name, the legacy issuer extension (1.1, raw text) and
/// the v2 source-repository URI (1.12, DER UTF8String).
pub fn fulcio_leaf_ext(uri: &str, email: &str, dns: &str, issuer: &str, repo: &str) -> String {
    format!(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=codeSigning\nsubjectAltName=URI:{uri},email:{email},DNS:{dns}\nauthorityKeyIdentifier=keyid\n1.3.6.1.4.1.57264.1.1=DER:{}\n1.3.6.1.4.1.57264.1.12=ASN1:UTF8String:{repo}\n",
        issuer
            .bytes()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    )
}
