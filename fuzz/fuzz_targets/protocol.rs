//! The daemon's socket protocol, as a job (any member of group `cilock`)
//! can drive it: arbitrary bytes → frames (the server's own sans-IO
//! decoder, fed in arbitrary chunk sizes) → each body and the whole input
//! as a JSON `Request` → for `begin-step`/`end-step`, the validation the
//! engine does before any side effect (step name, hashes, attestor names and
//! options). Nothing here may panic.
#![no_main]

use cilock_api::Request;
use cilock_daemon::engine::valid_step_name;
use cilock_daemon::kept::valid_id;
use cilock_api::frame::FrameDecoder;
use cilock_evidence::attestors::lifecycle::Lifecycle;
use libfuzzer_sys::fuzz_target;

/// A small limit, so over-limit frames are reached too.
const MAX: usize = 64 * 1024;

fn check_request(body: &[u8]) {
    let Ok(req) = serde_json::from_slice::<Request>(body) else {
        return;
    };
    // What the daemon parsed, the CLI can send: a request round-trips.
    let again = serde_json::to_vec(&req).expect("a parsed request serialises");
    let back: Request = serde_json::from_slice(&again).expect("a serialised request parses");
    assert_eq!(back, req, "request does not round-trip");
    match req {
        Request::Status => {}
        Request::BeginStep(b) => {
            let _ = valid_step_name(&b.step);
            let opts = b.options.unwrap_or_default();
            let _ = opts.hash_algs();
            if let Ok(lc) = Lifecycle::new(&b.attestations, opts) {
                let _ = lc.attestors();
                let _ = lc.hashes();
            }
        }
        Request::EndStep(e) => {
            let _ = valid_step_name(&e.step);
        }
        Request::ListKept(l) => {
            if let Some(s) = &l.step {
                let _ = valid_step_name(s);
            }
        }
        Request::FetchKept(f) => {
            if let Some(s) = &f.step {
                let _ = valid_step_name(s);
            }
            if let Some(id) = &f.id {
                let _ = valid_id(id);
            }
        }
        Request::AckKept(a) => {
            let _ = valid_id(&a.id);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // The whole input as one request body (where most inputs that parse
    // come from) ...
    check_request(data);
    // ... and as a stream of frames: the first byte picks the chunk size.
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = chunk as usize % 23 + 1;
    let (frames, used, err) = FrameDecoder::split(MAX, stream);
    assert!(used <= stream.len());
    assert_eq!(
        used,
        frames.iter().map(|f| 4 + f.len()).sum::<usize>(),
        "consumed bytes do not match the frames"
    );
    let mut dec = FrameDecoder::new(MAX);
    let mut got = Vec::new();
    let mut failed = None;
    'feed: for mut c in stream.chunks(chunk) {
        while !c.is_empty() {
            let before = dec.wanted();
            assert!(before >= 1 && before <= MAX.max(4));
            match dec.push(c) {
                Ok((n, f)) => {
                    // Everything is consumed unless a frame ended inside.
                    assert!(n >= 1 && n <= c.len());
                    assert!(f.is_some() || n == c.len());
                    // Only a body completes a frame that a header began.
                    assert!(f.is_none() || n >= before.min(c.len()));
                    got.extend(f);
                    c = &c[n..];
                }
                Err(e) => {
                    assert!(e.0 > MAX);
                    failed = Some(e);
                    break 'feed;
                }
            }
        }
    }
    assert_eq!(got, frames, "chunked decoding differs");
    assert_eq!(failed, err, "chunked decoding fails differently");
    for body in &frames {
        assert!(body.len() <= MAX);
        check_request(body);
    }
});
