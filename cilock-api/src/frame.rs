//! Sans-IO decoder for the socket framing (4-byte big-endian length, then
//! that many bytes of JSON).
//!
//! [`FrameDecoder`] holds no socket: the server feeds it what it read, and it
//! says how many more bytes the current frame needs ([`FrameDecoder::wanted`])
//! so the reader never takes bytes of the next frame off the socket. A frame
//! whose declared length exceeds the limit is refused as soon as its header is
//! complete, before any of its body is buffered; the body buffer grows with
//! the bytes actually received, never with the declared length. The same code
//! runs under the `protocol` fuzz target.

/// A frame whose declared length exceeds the decoder's limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooLarge(pub usize);

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "message of {} bytes exceeds the limit", self.0)
    }
}

impl std::error::Error for TooLarge {}

/// Initial capacity of a body buffer (it grows with the data received).
const INITIAL_BODY: usize = 64 * 1024;

#[derive(Debug)]
enum State {
    /// Reading the 4-byte length (`got` bytes so far).
    Header { hdr: [u8; 4], got: usize },
    /// Reading a body of `len` bytes.
    Body { len: usize, body: Vec<u8> },
}

/// Splits a byte stream into frames; see the module documentation.
#[derive(Debug)]
pub struct FrameDecoder {
    max: usize,
    state: State,
}

impl FrameDecoder {
    /// A decoder refusing frames longer than `max` bytes (body only).
    pub fn new(max: usize) -> Self {
        FrameDecoder {
            max,
            state: State::Header {
                hdr: [0; 4],
                got: 0,
            },
        }
    }

    /// The largest frame body accepted.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Bytes still needed to complete the current frame (header or body);
    /// never 0. Reading at most this many never consumes the next frame.
    pub fn wanted(&self) -> usize {
        match &self.state {
            State::Header { got, .. } => 4 - got,
            State::Body { len, body } => len - body.len(),
        }
    }

    /// Whether the decoder is between frames (nothing of a frame buffered).
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Header { got: 0, .. })
    }

    /// Bytes of the current, incomplete frame received so far (header
    /// included).
    pub fn received(&self) -> usize {
        match &self.state {
            State::Header { got, .. } => *got,
            State::Body { body, .. } => 4 + body.len(),
        }
    }

    /// Feeds `data`. Consumes bytes up to the end of the current frame only
    /// and returns how many it consumed, with the frame's body when that
    /// frame is now complete (the caller feeds the rest, if any, again).
    /// After an error the decoder must not be used: the stream cannot be
    /// resynchronised.
    pub fn push(&mut self, data: &[u8]) -> Result<(usize, Option<Vec<u8>>), TooLarge> {
        let mut used = 0;
        loop {
            match &mut self.state {
                State::Header { hdr, got } => {
                    let n = (4 - *got).min(data.len() - used);
                    hdr[*got..*got + n].copy_from_slice(&data[used..used + n]);
                    *got += n;
                    used += n;
                    if *got < 4 {
                        return Ok((used, None));
                    }
                    let len = u32::from_be_bytes(*hdr) as usize;
                    if len > self.max {
                        return Err(TooLarge(len));
                    }
                    self.state = State::Body {
                        len,
                        body: Vec::with_capacity(len.min(INITIAL_BODY)),
                    };
                    // Loop: a 0-length frame is complete right away, and the
                    // body may follow in the same buffer.
                }
                State::Body { len, body } => {
                    let n = (*len - body.len()).min(data.len() - used);
                    body.extend_from_slice(&data[used..used + n]);
                    used += n;
                    if body.len() < *len {
                        return Ok((used, None));
                    }
                    let body = std::mem::take(body);
                    self.state = State::Header {
                        hdr: [0; 4],
                        got: 0,
                    };
                    return Ok((used, Some(body)));
                }
            }
        }
    }

    /// Every complete frame in `data`, in order, with the number of bytes
    /// they used (a trailing partial frame is left unconsumed); stops at the
    /// first frame over the limit.
    pub fn split(max: usize, data: &[u8]) -> (Vec<Vec<u8>>, usize, Option<TooLarge>) {
        let mut dec = FrameDecoder::new(max);
        let mut frames = Vec::new();
        let mut pos = 0;
        let mut complete = 0;
        while pos < data.len() {
            match dec.push(&data[pos..]) {
                Ok((n, frame)) => {
                    pos += n;
                    if let Some(f) = frame {
                        frames.push(f);
                        complete = pos;
                    }
                }
                Err(e) => return (frames, complete, Some(e)),
            }
        }
        (frames, complete, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn one_byte_at_a_time() {
        let mut data = frame(b"{\"request\":\"status\"}");
        data.extend(frame(b""));
        data.extend(frame(b"xy"));
        let mut dec = FrameDecoder::new(100);
        let mut got = Vec::new();
        for b in &data {
            assert!(dec.wanted() >= 1);
            let (n, f) = dec.push(std::slice::from_ref(b)).unwrap();
            assert_eq!(n, 1);
            got.extend(f);
        }
        assert!(dec.is_idle());
        assert_eq!(
            got,
            vec![b"{\"request\":\"status\"}".to_vec(), vec![], b"xy".to_vec()]
        );
    }

    #[test]
    fn stops_at_frame_end() {
        let mut data = frame(b"abc");
        data.extend(frame(b"de"));
        let mut dec = FrameDecoder::new(100);
        let (n, f) = dec.push(&data).unwrap();
        assert_eq!((n, f), (7, Some(b"abc".to_vec())));
        let (n, f) = dec.push(&data[7..]).unwrap();
        assert_eq!((n, f), (6, Some(b"de".to_vec())));
    }

    #[test]
    fn too_large_before_body() {
        let mut dec = FrameDecoder::new(10);
        assert_eq!(dec.push(&11u32.to_be_bytes()), Err(TooLarge(11)));
        let mut dec = FrameDecoder::new(10);
        assert_eq!(
            dec.push(&u32::MAX.to_be_bytes()),
            Err(TooLarge(u32::MAX as usize))
        );
    }

    #[test]
    fn partial_and_split() {
        let mut dec = FrameDecoder::new(10);
        assert_eq!(dec.push(&[0, 0]).unwrap(), (2, None));
        assert!(!dec.is_idle());
        assert_eq!(dec.received(), 2);
        assert_eq!(dec.wanted(), 2);
        assert_eq!(dec.push(&[0, 5, b'a']).unwrap(), (3, None));
        assert_eq!(dec.received(), 5);
        assert_eq!(dec.wanted(), 4);
        let mut data = frame(b"a");
        data.extend(frame(b"bb"));
        data.extend([0, 0, 0]);
        let (frames, used, err) = FrameDecoder::split(10, &data);
        assert_eq!(frames, vec![b"a".to_vec(), b"bb".to_vec()]);
        assert_eq!(used, 11);
        assert!(err.is_none());
    }
}
