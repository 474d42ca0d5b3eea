//! Feeds arbitrary bytes to the frame decoder, as a stream (in two pieces) and as one WebSocket
//! message. Anything that decodes must re-encode and decode to the same frame.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use proto::{Decoder, Limits};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let mut dec = Decoder::new(limits);
    let mut src = BytesMut::from(&data[..split]);
    let mut pieces = [&data[split..]].into_iter();
    loop {
        match dec.decode(&mut src) {
            Ok(Some(frame)) => {
                let bytes = frame.encode_to_vec().expect("a decoded frame re-encodes");
                let again = Decoder::new(limits).decode_message(&bytes[..]);
                assert_eq!(again.as_ref(), Ok(&frame));
            }
            Ok(None) => match pieces.next() {
                Some(piece) => src.extend_from_slice(piece),
                None => break,
            },
            Err(_) => break,
        }
    }
    let _ = Decoder::new(limits).decode_message(data);
});
