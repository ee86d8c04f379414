//! Reading a build's JSON-lines response while it is forwarded: the RUN
//! containers the engine printed and the image it built.
//!
//! The bytes come from the engine but describe a build the job controls
//! (its Dockerfile's output is in them), so the parser keeps bounds: a line
//! longer than [`MAX_LINE`] is skipped (counted), at most
//! [`MAX_CONTAINERS`] container ids are kept (the rest counted), and a
//! line that is not a JSON object is skipped. Nothing is ever buffered
//! beyond the current line.

/// Longest response line parsed, in bytes.
pub const MAX_LINE: usize = 256 * 1024;
/// Most RUN container ids kept per build.
pub const MAX_CONTAINERS: usize = 1024;

/// The parser's state and findings.
#[derive(Debug, Default)]
pub struct BuildStream {
    line: Vec<u8>,
    skipping: bool,
    /// RUN container ids as printed (`Running in <id>`), in order, unique.
    pub containers: Vec<String>,
    /// The built image (`aux.ID`, else the id of `Successfully built <id>`).
    pub image_id: String,
    /// Lines skipped: too long or not JSON objects.
    pub skipped_lines: u64,
    /// Container ids dropped over [`MAX_CONTAINERS`].
    pub dropped_containers: u64,
}

impl BuildStream {
    /// Feeds the next bytes of the response.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.push(&bytes[..i]);
                    self.end_line();
                    bytes = &bytes[i + 1..];
                }
                None => {
                    self.push(bytes);
                    return;
                }
            }
        }
    }

    /// The response ended: parses a last line without a newline.
    pub fn finish(&mut self) {
        if !self.line.is_empty() || self.skipping {
            self.end_line();
        }
    }

    fn push(&mut self, b: &[u8]) {
        if self.skipping {
            return;
        }
        if self.line.len() + b.len() > MAX_LINE {
            self.skipping = true;
            self.line = Vec::new();
            return;
        }
        self.line.extend_from_slice(b);
    }

    fn end_line(&mut self) {
        if std::mem::take(&mut self.skipping) {
            self.skipped_lines += 1;
            return;
        }
        let line = std::mem::take(&mut self.line);
        let text = line.trim_ascii();
        if text.is_empty() {
            return;
        }
        match serde_json::from_slice::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(m)) => self.message(&m),
            _ => self.skipped_lines += 1,
        }
    }

    fn message(&mut self, m: &serde_json::Map<String, serde_json::Value>) {
        if let Some(s) = m.get("stream").and_then(|s| s.as_str()) {
            for l in s.lines() {
                let l = l.trim();
                if let Some(id) = l.strip_prefix("---> Running in ") {
                    self.container(id.trim());
                } else if let Some(id) = l.strip_prefix("Successfully built ") {
                    let id = id.trim();
                    if self.image_id.is_empty() && is_hex(id) {
                        self.image_id = id.to_string();
                    }
                }
            }
        }
        if let Some(id) = m
            .get("aux")
            .and_then(|a| a.get("ID"))
            .and_then(|i| i.as_str())
        {
            if id.len() <= 128 {
                self.image_id = id.to_string();
            }
        }
    }

    fn container(&mut self, id: &str) {
        if !is_hex(id) || self.containers.iter().any(|c| c == id) {
            return;
        }
        if self.containers.len() >= MAX_CONTAINERS {
            self.dropped_containers += 1;
        } else {
            self.containers.push(id.to_string());
        }
    }
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What dockerd 20.10's classic builder streamed on this machine (trimmed).
    const CLASSIC: &str = concat!(
        "{\"stream\":\"Step 1/2 : FROM bb:local\"}\r\n",
        "{\"stream\":\"\\n\"}\r\n",
        "{\"stream\":\" ---\\u003e d755a1b2c3d4\\n\"}\r\n",
        "{\"stream\":\"Step 2/2 : RUN cat /proc/self/cgroup\"}\r\n",
        "{\"stream\":\"\\n\"}\r\n",
        "{\"stream\":\" ---\\u003e Running in 64ec2752e53b\\n\"}\r\n",
        "{\"stream\":\"0::/cilock.steps/s/64ec2752e53b\\n\"}\r\n",
        "{\"stream\":\"Removing intermediate container 64ec2752e53b\\n\"}\r\n",
        "{\"aux\":{\"ID\":\"sha256:9a5cd0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d\"}}\r\n",
        "{\"stream\":\"Successfully built 9a5cd0e1f2a3\\n\"}\r\n",
    );

    #[test]
    fn a_classic_build_stream_in_any_pieces() {
        for size in [1, 2, 7, 64, CLASSIC.len()] {
            let mut p = BuildStream::default();
            for chunk in CLASSIC.as_bytes().chunks(size) {
                p.feed(chunk);
            }
            p.finish();
            assert_eq!(p.containers, vec!["64ec2752e53b"], "chunk {size}");
            assert_eq!(
                p.image_id,
                "sha256:9a5cd0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d"
            );
            assert_eq!(p.skipped_lines, 0);
        }
    }

    #[test]
    fn buildkit_aux_and_the_short_id_fallback() {
        let mut p = BuildStream::default();
        p.feed(b"{\"id\":\"moby.buildkit.trace\",\"aux\":\"CgQIARAB\"}\n");
        p.feed(b"{\"id\":\"moby.image.id\",\"aux\":{\"ID\":\"sha256:ab\"}}");
        p.finish();
        assert_eq!(p.image_id, "sha256:ab");
        let mut p = BuildStream::default();
        p.feed(b"{\"stream\":\"Successfully built 0123abcd\\n\"}\n");
        assert_eq!(p.image_id, "0123abcd");
    }

    #[test]
    fn bounds_hold_and_are_counted() {
        let mut p = BuildStream::default();
        let long = vec![b'x'; MAX_LINE + 10];
        p.feed(&long);
        p.feed(&long);
        p.feed(b"\nnot json\n[1]\n{\"error\":\"boom\"}\n");
        // An error line is JSON: read, not skipped.
        assert_eq!(p.skipped_lines, 3);
        assert!(p.line.capacity() <= MAX_LINE);
        for i in 0..MAX_CONTAINERS + 5 {
            p.feed(format!("{{\"stream\":\" ---> Running in {i:012x}\\n\"}}\n").as_bytes());
        }
        p.feed(b"{\"stream\":\" ---> Running in not-hex\\n\"}\n");
        assert_eq!(p.containers.len(), MAX_CONTAINERS);
        assert_eq!(p.dropped_containers, 5);
    }
}
