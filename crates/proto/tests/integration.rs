//! proto's integration tests: the regression corpus of malformed inputs, and property tests of
//! the frame codec through its public API.

use std::path::Path;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proto::{
    Data, DataFlags, Decoder, ErrorCode, ErrorFrame, Frame, FrameError, HEADER_LEN, Hello, Limits,
    Role, StreamId, Welcome, encode,
};

// ---------------------------------------------------------------------------------------------
// Regression corpus: tests/corpus/*.bin, each decoded as one WebSocket message and as a byte
// stream fed one byte at a time; both must fail with the listed error kind.

/// (file, expected `FrameError::kind()`). Every file in the corpus must be listed.
const CORPUS: &[(&str, &str)] = &[
    ("ack_body_too_long.bin", "trailing_bytes"),
    ("bad_crc.bin", "bad_crc"),
    ("bad_crc_flag_flip.bin", "bad_crc"),
    ("bad_magic.bin", "bad_magic"),
    ("bad_magic_second_byte.bin", "bad_magic"),
    ("bad_utf8_stream_id.bin", "bad_stream_id"),
    ("error_bad_utf8_message.bin", "bad_utf8"),
    ("hello_bad_resume_tag.bin", "bad_value"),
    ("hello_bad_role.bin", "bad_value"),
    ("hello_token_over_limit.bin", "field_too_long"),
    ("huge_length.bin", "too_large"),
    ("reserved_flags_on_ack.bin", "reserved_flags"),
    ("stream_id_path_traversal.bin", "bad_stream_id"),
    ("truncated_body.bin", "incomplete"),
    ("truncated_header.bin", "incomplete"),
    ("two_frames_in_one_message.bin", "extra_bytes_in_message"),
    ("type_zero.bin", "unknown_type"),
    ("unknown_type.bin", "unknown_type"),
    ("unsupported_version.bin", "unsupported_version"),
    ("zero_length.bin", "incomplete"),
    ("zero_length_data_body.bin", "truncated"),
];

fn corpus_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

/// Feeds `bytes` one at a time, then signals end of stream; returns the frames or first error.
fn decode_stream_bytewise(bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
    let mut dec = Decoder::default();
    let mut src = BytesMut::new();
    let mut out = Vec::new();
    for &b in bytes {
        src.extend_from_slice(&[b]);
        while let Some(f) = dec.decode(&mut src)? {
            out.push(f);
        }
    }
    while let Some(f) = dec.decode_eof(&mut src)? {
        out.push(f);
    }
    Ok(out)
}

#[test]
fn corpus_inputs_fail_with_their_expected_error() {
    let mut on_disk: Vec<String> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".bin"))
        .collect();
    on_disk.sort();
    let listed: Vec<&str> = CORPUS.iter().map(|(n, _)| *n).collect();
    assert_eq!(on_disk, listed, "every corpus file needs an expected kind");

    for (name, kind) in CORPUS {
        let bytes = std::fs::read(corpus_dir().join(name)).unwrap();
        let err = Decoder::default()
            .decode_message(&bytes[..])
            .expect_err(name);
        assert_eq!(err.kind(), *kind, "{name} as a message: {err}");
        assert!(!err.to_string().is_empty());

        let streamed = decode_stream_bytewise(&bytes);
        if *kind == "extra_bytes_in_message" {
            assert_eq!(streamed.unwrap().len(), 2, "{name} as a stream");
        } else if bytes.is_empty() {
            // An empty stream is a clean end; only an empty *message* is malformed.
            assert_eq!(streamed.unwrap(), vec![], "{name} as a stream");
        } else {
            let err = streamed.expect_err(name);
            assert_eq!(err.kind(), *kind, "{name} as a stream: {err}");
        }
    }
}

#[test]
fn corpus_error_codes_are_what_a_server_sends() {
    let code = |name: &str| {
        let bytes = std::fs::read(corpus_dir().join(name)).unwrap();
        Decoder::default()
            .decode_message(&bytes[..])
            .unwrap_err()
            .code()
    };
    assert_eq!(code("bad_crc.bin"), ErrorCode::BadCrc);
    assert_eq!(code("huge_length.bin"), ErrorCode::TooLarge);
    assert_eq!(code("bad_utf8_stream_id.bin"), ErrorCode::BadStreamId);
    assert_eq!(
        code("unsupported_version.bin"),
        ErrorCode::UnsupportedVersion
    );
    assert_eq!(code("bad_magic.bin"), ErrorCode::Protocol);
}

// ---------------------------------------------------------------------------------------------
// Property tests.

fn arb_stream_id() -> impl Strategy<Value = StreamId> {
    "[A-Za-z0-9][A-Za-z0-9._-]{0,127}".prop_map(|s| StreamId::parse(&s).unwrap())
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    let hello = (
        1..=255u8,
        prop_oneof![Just(Role::Primary), Just(Role::Backup)],
        arb_stream_id(),
        proptest::collection::vec(any::<u8>(), 0..64),
        any::<Option<u64>>(),
    )
        .prop_map(|(max_version, role, stream, token, resume_from)| {
            Frame::Hello(Hello {
                max_version,
                role,
                stream,
                token: Bytes::from(token),
                resume_from,
            })
        });
    let welcome = (
        any::<u64>(),
        "\\PC{0,40}".prop_filter("fits a u8 length", |s: &String| s.len() <= 255),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(|(next_seq, server_id, max_payload, max_frame_len, ack)| {
            Frame::Welcome(Welcome {
                next_seq,
                server_id,
                max_payload,
                max_frame_len,
                ack_interval_ms: ack,
            })
        });
    let data = (
        any::<u64>(),
        any::<i64>(),
        0..8u8,
        proptest::collection::vec(any::<u8>(), 0..2048),
    )
        .prop_map(|(seq, pts, flags, payload)| {
            Frame::Data(Data {
                seq,
                pts,
                flags: DataFlags::from_bits(flags).unwrap(),
                payload: Bytes::from(payload),
            })
        });
    let error = (any::<u16>(), "\\PC{0,100}").prop_map(|(code, message)| {
        Frame::Error(ErrorFrame {
            code: ErrorCode::from_u16(code),
            message,
        })
    });
    prop_oneof![
        hello,
        welcome,
        data.clone(),
        data,
        error,
        any::<u64>().prop_map(|through| Frame::Ack { through }),
        any::<u64>().prop_map(|final_seq| Frame::End { final_seq }),
        any::<u64>().prop_map(Frame::Ping),
        any::<u64>().prop_map(Frame::Pong),
    ]
}

/// Arbitrary bytes, often behind a valid header prefix so the body parsers get exercised.
fn arb_input() -> impl Strategy<Value = Vec<u8>> {
    let raw = proptest::collection::vec(any::<u8>(), 0..300);
    let framed = (
        0..=9u8,
        0..8u8,
        prop_oneof![0..64u32, any::<u32>()],
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(ty, flags, len, body)| {
            let mut v = vec![b'F', b'M', 1, ty, flags];
            v.extend_from_slice(&len.to_be_bytes());
            v.extend_from_slice(&body);
            v
        });
    prop_oneof![raw, framed]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any sequence of frames, encoded back to back and cut at arbitrary points, decodes to the
    /// same frames.
    #[test]
    fn frames_survive_any_split(
        frames in proptest::collection::vec(arb_frame(), 1..8),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let mut wire = BytesMut::new();
        for f in &frames {
            encode(f, &mut wire).unwrap();
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        cuts.push(wire.len());
        cuts.sort_unstable();
        let mut dec = Decoder::default();
        let mut src = BytesMut::new();
        let mut out = Vec::new();
        let mut at = 0;
        for cut in cuts {
            src.extend_from_slice(&wire[at..cut]);
            at = cut;
            while let Some(f) = dec.decode(&mut src).unwrap() {
                out.push(f);
            }
        }
        prop_assert!(src.is_empty());
        prop_assert_eq!(dec.decode_eof(&mut src).unwrap(), None);
        prop_assert_eq!(out, frames);
    }

    /// Each frame alone is one WebSocket message.
    #[test]
    fn each_frame_is_one_message(frame in arb_frame()) {
        let bytes = frame.encode_to_vec().unwrap();
        prop_assert_eq!(bytes.len(), frame.encoded_len().unwrap());
        prop_assert_eq!(Decoder::default().decode_message(&bytes[..]).unwrap(), frame);
    }

    /// Arbitrary input never panics, always ends in a frame, "need more" or a typed error, and
    /// never makes the decoder reserve more than the frame limit allows.
    #[test]
    fn arbitrary_bytes_never_panic_or_overallocate(input in arb_input(), step in 1..64usize) {
        let limits = Limits { max_frame_len: 4096, max_payload: 2048, max_token: 256, max_stream_id: 64 };
        let mut dec = Decoder::new(limits);
        let mut src = BytesMut::with_capacity(64);
        let mut failed = false;
        for chunk in input.chunks(step) {
            src.extend_from_slice(chunk);
            let before = src.capacity();
            loop {
                match dec.decode(&mut src) {
                    Ok(Some(frame)) => {
                        // Whatever decodes must re-encode within the same limits.
                        prop_assert!(frame.check(&limits).is_ok());
                        let again = frame.encode_to_vec().unwrap();
                        prop_assert_eq!(Decoder::new(limits).decode_message(&again[..]).unwrap(), frame);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        prop_assert!(!e.to_string().is_empty());
                        let _ = e.code();
                        failed = true;
                        break;
                    }
                }
            }
            let bound = before.max(limits.max_frame_len as usize) * 2;
            prop_assert!(src.capacity() <= bound, "capacity {} > {}", src.capacity(), bound);
            if failed {
                break;
            }
        }
        if !failed {
            // End of stream: either clean or a typed Incomplete/other error.
            let _ = dec.decode_eof(&mut src);
        }
        // The one-message path agrees that arbitrary input is handled without panicking.
        let _ = Decoder::new(limits).decode_message(&input[..]);
    }

    /// Flipping any single bit of an encoded DATA frame yields an error or "need more" (a longer
    /// length), never a decoded frame (bar a flipped type byte) and never a panic: the CRC covers
    /// header, seq, pts and payload.
    #[test]
    fn bit_flips_in_data_are_caught(
        seq in any::<u64>(),
        pts in any::<i64>(),
        flags in 0..8u8,
        payload in proptest::collection::vec(any::<u8>(), 0..512),
        bit in any::<prop::sample::Index>(),
    ) {
        let frame = Frame::Data(Data {
            seq,
            pts,
            flags: DataFlags::from_bits(flags).unwrap(),
            payload: Bytes::from(payload),
        });
        let mut bytes = frame.encode_to_vec().unwrap();
        let bit = bit.index(bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        let mut src = BytesMut::from(&bytes[..]);
        match Decoder::default().decode(&mut src) {
            // Only a flipped type byte could turn the bytes into another valid frame; every
            // other flip is caught by the header checks or the CRC.
            Ok(Some(other)) => {
                prop_assert_eq!(bit / 8, 3, "flip at byte {} decoded to {:?}", bit / 8, other);
                prop_assert_ne!(other, frame);
            }
            Ok(None) => prop_assert!((5..HEADER_LEN).contains(&(bit / 8)), "only a length flip can leave it waiting"),
            Err(FrameError::BadCrc { .. }) => prop_assert!(bit / 8 >= 4, "CRC errors come from flags, length or body"),
            Err(_) => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The HTTP contract: every example in the schemas deserializes into its type and serializes
// back to the same JSON (absent and null optional fields are the same thing).

mod contract {
    use proto::api::*;
    use serde_json::Value;
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::Schema;

    /// `null` members removed, recursively: an absent optional field and a null one are equal.
    fn normalize(v: &Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k.clone(), normalize(v)))
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
            Value::Number(n) => n
                .as_f64()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            other => other.clone(),
        }
    }

    fn roundtrip<T: serde::Serialize + serde::de::DeserializeOwned>(name: &str, ex: &Value) {
        let t: T = serde_json::from_value(ex.clone())
            .unwrap_or_else(|e| panic!("example of {name} does not deserialize: {e}\n{ex:#}"));
        let back = serde_json::to_value(&t).unwrap();
        assert_eq!(
            normalize(&back),
            normalize(ex),
            "{name}: the example does not survive a round trip"
        );
        // And the serialized form reads back.
        let _: T = serde_json::from_value(back).unwrap();
    }

    fn examples(s: &RefOr<Schema>) -> Vec<Value> {
        let json = serde_json::to_value(s).unwrap();
        json.get("examples")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn every_example_round_trips_through_its_type() {
        macro_rules! table {
            ($($t:ty),* $(,)?) => {
                vec![$( (stringify!($t).rsplit("::").next().unwrap().to_string(),
                         roundtrip::<$t> as fn(&str, &Value)) ),*]
            };
        }
        let table = table!(
            ErrorBody,
            Urls,
            Liveness,
            proto::StreamId,
            proto::ServerId,
            proto::PopId,
            proto::BroadcastId,
            proto::StreamKey,
            Point,
            LocationInput,
            TypedLocation,
            IpLocation,
            AssignmentRequest,
            ProbeResult,
            ProbeTargets,
            Assignment,
            RttSource,
            RankedList,
            Registration,
            Registered,
            Heartbeat,
            HeartbeatAnswer,
            Readiness,
            StreamInfo,
            BroadcastInfo,
            StreamCreate,
            StreamKeyIssued,
            StreamRecord,
            StreamUpdate,
            PublishRequest,
            PublishGrant,
            PlaybackTokenRequest,
            PlaybackToken,
            WebhookRequest,
            WebhookAnswer,
            EntryStreams,
            EntryReadiness,
            PlaybackPath,
            PushResult,
        );
        let mut checked = 0;
        for (name, schema) in schemas() {
            let ex = examples(&schema);
            if ex.is_empty() {
                continue;
            }
            let Some((_, f)) = table.iter().find(|(n, _)| *n == name) else {
                panic!("schema {name} has examples but no round-trip entry in this test");
            };
            for e in &ex {
                f(&name, e);
                checked += 1;
            }
        }
        assert!(checked >= table.len(), "only {checked} examples checked");
        // Every message type of a request or an answer carries an example.
        for (name, _) in &table {
            let (_, s) = schemas().into_iter().find(|(n, _)| n == name).unwrap();
            assert!(!examples(&s).is_empty(), "{name} has no example");
        }
    }

    #[test]
    fn requests_refuse_unknown_fields_and_bad_ids() {
        let e = serde_json::from_str::<AssignmentRequest>(r#"{"stream": "a", "loaction": "x"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("loaction"), "{e}");
        let e = serde_json::from_str::<Registration>(
            r#"{"id": "../x", "pop": "p", "location": "Paris", "capacity": {"streams": 1, "mbps": 1}, "urls": {}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("entry-server id"), "{e}");
    }

    #[test]
    fn object_schemas_list_their_required_fields() {
        let mut with_required = 0;
        let mut objects = 0;
        for (name, s) in schemas() {
            let v = serde_json::to_value(&s).unwrap();
            if v.get("type") == Some(&Value::from("object")) && v.get("properties").is_some() {
                objects += 1;
                if v.get("required").is_some() {
                    with_required += 1;
                } else {
                    // Only messages whose every field is optional may list none.
                    assert!(
                        [
                            "AssignmentRequest",
                            "Heartbeat",
                            "Load",
                            "PlaybackTokenRequest",
                            "StreamUpdate",
                            "Urls",
                            "HeartbeatAnswer",
                            "Locations",
                            "WebhookAnswer",
                        ]
                        .contains(&name.as_str()),
                        "{name} lists no required field: {v:#}"
                    );
                }
            }
        }
        assert!(
            objects > 30 && with_required > 25,
            "{with_required}/{objects}"
        );
    }
}
