//! Network payloads: DNS queries (UDP, and TCP on any port once a stream
//! starts like one), the answers matched to them, TLS ClientHellos and HTTP
//! CONNECT tunnels, reassembled per (process, socket) within bounds.

use super::*;

impl Recorder {
    pub(super) fn egress(
        &mut self,
        pid: u32,
        fd: i32,
        dst: Option<std::net::SocketAddr>,
        stream: bool,
        bytes: Vec<u8>,
        time: SystemTime,
    ) {
        let Some(i) = self.proc_mut(pid, None) else {
            return;
        };
        let port = dst.map(|d| d.port());
        // DNS: UDP datagrams, or TCP to port 53 or starting with a DNS
        // query (length-prefixed).
        if !stream || port == Some(53) || self.dns_streams.contains(&(pid, fd)) {
            let queries = if stream {
                // Complete length-prefixed messages; keep a partial one.
                let buf = self.dns_tcp.entry((pid, fd)).or_default();
                buf.extend_from_slice(&bytes);
                let mut qs: Option<Vec<dns::DnsQuery>> = None;
                while buf.len() >= 2 {
                    let len = u16::from_be_bytes([buf[0], buf[1]]) as usize;
                    if buf.len() < 2 + len {
                        break;
                    }
                    let msg: Vec<u8> = buf.drain(..2 + len).skip(2).collect();
                    if let Some(q) = dns::parse_dns_queries(&msg, false) {
                        qs.get_or_insert_with(Vec::new).extend(q);
                    }
                }
                if buf.is_empty() {
                    self.dns_tcp.remove(&(pid, fd));
                }
                qs
            } else {
                dns::parse_dns_queries(&bytes, false)
            };
            if let Some(qs) = queries {
                let (server_address, server_port) = dst
                    .map(|d| (d.ip().to_string(), d.port()))
                    .unwrap_or_default();
                for q in qs {
                    let n = self.procs[i].net.dns_lookups.len();
                    if n >= MAX_DNS_LOOKUPS_PER_PROCESS
                        || self.dns_lookups >= MAX_DNS_LOOKUPS_PER_STEP
                    {
                        self.count("dnsLookups");
                        continue;
                    }
                    self.dns_lookups += 1;
                    let open = self
                        .dns_open
                        .entry((pid, q.id))
                        .or_insert_with(|| (i, Vec::new()));
                    if open.0 != i {
                        *open = (i, Vec::new());
                    }
                    open.1.push(n);
                    self.procs[i].net.dns_lookups.push(DnsLookup {
                        server_address: server_address.clone(),
                        server_port,
                        name: q.name,
                        qtype: q.qtype,
                        transport: if stream { "tcp" } else { "udp" }.into(),
                        answers: Vec::new(),
                        timestamp: ts(time),
                    });
                }
                return;
            }
            if !stream || self.dns_streams.contains(&(pid, fd)) {
                return;
            }
        }
        // TLS: buffer the start of the stream until the ClientHello is whole.
        let buf = self.hello.entry((pid, fd)).or_default();
        if buf.len() >= MAX_HELLO {
            return;
        }
        buf.extend_from_slice(&bytes[..bytes.len().min(MAX_HELLO - buf.len())]);
        // DNS over TCP on another port than 53: a strictly valid query at
        // the start of the stream.
        if port != Some(53) {
            match dns::dns_tcp_start(buf) {
                dns::DnsStart::Incomplete => return,
                dns::DnsStart::Yes => {
                    let start = self.hello.remove(&(pid, fd)).unwrap_or_default();
                    self.dns_streams.insert((pid, fd));
                    return self.egress(pid, fd, dst, stream, start, time);
                }
                dns::DnsStart::No => {}
            }
        }
        let Some(buf) = self.hello.get_mut(&(pid, fd)) else {
            return;
        };
        // Through an HTTP proxy the stream starts with "CONNECT host:port
        // HTTP/1.1 …\r\n\r\n", then the ClientHello for that host.
        let (proxy, start) = match http_connect(buf) {
            Connect::Incomplete => return,
            Connect::No => (None, 0),
            Connect::Target(host, end) => (Some(host), end),
        };
        // The server name is taken from the first bytes as soon as they
        // hold it: a hello larger than what the backend captures keeps its
        // name, and says it was cut (`helloTruncated`).
        let found = match tls::client_hello_prefix(&buf[start..]) {
            None => {
                // Keep a marker so later writes on this stream are ignored.
                buf.resize(MAX_HELLO, 0);
                proxy.map(|h| (h, Vec::new(), false))
            }
            Some(h) if h.complete => {
                buf.resize(MAX_HELLO, 0);
                Some((
                    h.sni.or(proxy).unwrap_or_default(),
                    h.alpn.unwrap_or_default(),
                    false,
                ))
            }
            Some(h) => {
                // Cut so far; the rest may follow (the buffer is kept). The
                // proxy target, if any, is known already.
                let started = buf.len() > start;
                match (h.sni, proxy) {
                    (Some(n), _) | (None, Some(n)) => {
                        Some((n, h.alpn.unwrap_or_default(), started))
                    }
                    (None, None) => None,
                }
            }
        };
        let Some((hostname, alpn, hello_truncated)) = found else {
            return;
        };
        let full = self.procs[i].net.connections.len() >= MAX_CONNECTIONS_PER_PROCESS
            || self.connections >= MAX_CONNECTIONS_PER_STEP;
        let conns = &mut self.procs[i].net.connections;
        let target = conns
            .iter_mut()
            .rev()
            .find(|c| c.syscall == "connect" && c.fd == fd as i64);
        match target {
            Some(c) => {
                c.hostname = hostname;
                c.alpn = alpn;
                c.hello_truncated = hello_truncated;
            }
            None if full => {
                *self.truncated.entry("connections").or_default() += 1;
            }
            None => {
                self.connections += 1;
                // The connect was not seen (e.g. made before the step
                // began): record the TLS peer anyway.
                let (family, address) = match dst {
                    Some(d) if d.is_ipv4() => ("AF_INET".to_string(), d.ip().to_string()),
                    Some(d) => ("AF_INET6".to_string(), d.ip().to_string()),
                    None => ("AF_UNSPEC".to_string(), String::new()),
                };
                conns.push(NetworkConnection {
                    syscall: "connect".into(),
                    family,
                    address,
                    port,
                    fd: fd as i64,
                    timestamp: ts(time),
                    hostname,
                    alpn,
                    hello_truncated,
                });
            }
        }
    }

    /// A packet a step process received on a socket it used: DNS answers
    /// are added to the lookups they answer (same process, same
    /// transaction id, from the server the query went to).
    pub(super) fn ingress(
        &mut self,
        pid: u32,
        src: std::net::SocketAddr,
        stream: bool,
        bytes: &[u8],
        _time: SystemTime,
    ) {
        if stream || bytes.len() < 2 {
            return;
        }
        let id = u16::from_be_bytes([bytes[0], bytes[1]]);
        let Some((i, idx)) = self.dns_open.get(&(pid, id)).cloned() else {
            return;
        };
        let Some(answers) = dns::parse_dns_answers(bytes, false) else {
            return;
        };
        let Some(p) = self.procs.get_mut(i) else {
            return;
        };
        // Only from the server the query went to; the first answer wins.
        let mut answered = false;
        for j in idx {
            if let Some(l) = p.net.dns_lookups.get_mut(j) {
                if l.server_address == src.ip().to_string() && l.server_port == src.port() {
                    l.answers
                        .extend(answers.iter().map(|a| format!("{} {}", a.rtype, a.data)));
                    answered = true;
                }
            }
        }
        if answered {
            self.dns_open.remove(&(pid, id));
        }
    }
}
