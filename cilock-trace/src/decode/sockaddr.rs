//! Decoding `struct sockaddr` bytes read from tracee memory.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use crate::SockAddr;

/// Largest sockaddr read from a tracee (`sizeof(struct sockaddr_storage)`).
pub const MAX_SOCKADDR: usize = 128;

/// Decodes raw sockaddr bytes (native-endian family, network-order port).
/// Returns `None` when the bytes are too short to hold a family.
pub fn decode(b: &[u8]) -> Option<SockAddr> {
    let fam = u16::from_ne_bytes(b.get(..2)?.try_into().ok()?);
    Some(match fam as i32 {
        libc::AF_INET if b.len() >= 8 => {
            let port = u16::from_be_bytes([b[2], b[3]]);
            let ip = Ipv4Addr::new(b[4], b[5], b[6], b[7]);
            SockAddr::Ip(SocketAddr::V4(SocketAddrV4::new(ip, port)))
        }
        libc::AF_INET6 if b.len() >= 24 => {
            let port = u16::from_be_bytes([b[2], b[3]]);
            let flow = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[8..24]);
            let scope = b
                .get(24..28)
                .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
                .unwrap_or(0);
            SockAddr::Ip(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a),
                port,
                flow,
                scope,
            )))
        }
        libc::AF_UNIX => {
            let path = &b[2..];
            if path.first() == Some(&0) {
                // Abstract namespace: the name is the remaining bytes (may
                // contain NULs), rendered with '@'.
                let name = &path[1..];
                SockAddr::Unix(format!("@{}", crate::pathname::escape(name)))
            } else {
                let end = path.iter().position(|&c| c == 0).unwrap_or(path.len());
                SockAddr::Unix(crate::pathname::escape(&path[..end]))
            }
        }
        _ => SockAddr::Other(fam, b[2..].to_vec()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_families() {
        let mut v4 = (libc::AF_INET as u16).to_ne_bytes().to_vec();
        v4.extend_from_slice(&443u16.to_be_bytes());
        v4.extend_from_slice(&[127, 0, 0, 1]);
        v4.extend_from_slice(&[0; 8]);
        assert_eq!(
            decode(&v4),
            Some(SockAddr::Ip("127.0.0.1:443".parse().unwrap()))
        );
        let mut un = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        un.extend_from_slice(b"/run/x.sock\0");
        assert_eq!(decode(&un), Some(SockAddr::Unix("/run/x.sock".into())));
        let mut ab = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        ab.extend_from_slice(b"\0name");
        assert_eq!(decode(&ab), Some(SockAddr::Unix("@name".into())));
        assert_eq!(decode(&[1]), None);
        assert!(matches!(
            decode(&[16, 0, 1, 2]),
            Some(SockAddr::Other(16, _))
        ));
        // short AF_INET falls to Other
        let short = (libc::AF_INET as u16).to_ne_bytes();
        assert!(matches!(decode(&short), Some(SockAddr::Other(..))));
    }
}
