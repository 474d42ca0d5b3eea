use super::*;

fn stream(s: &str) -> StreamId {
    StreamId::parse(s).unwrap()
}

fn hello() -> Hello {
    Hello {
        max_version: 1,
        role: Role::Primary,
        stream: stream("cam1"),
        token: Bytes::from_static(b"tk"),
        resume_from: Some(5),
    }
}

fn one_of_each() -> Vec<Frame> {
    vec![
        Frame::Hello(hello()),
        Frame::Hello(Hello {
            role: Role::Backup,
            resume_from: None,
            token: Bytes::new(),
            max_version: 255,
            ..hello()
        }),
        Frame::Welcome(Welcome {
            next_seq: 42,
            server_id: "fra-1.example".into(),
            max_payload: 1 << 20,
            max_frame_len: 2 << 20,
            ack_interval_ms: 250,
        }),
        Frame::Data(Data {
            seq: u64::MAX,
            pts: -33_000,
            flags: DataFlags::KEYFRAME | DataFlags::END_OF_GOP,
            payload: Bytes::from(vec![7u8; 1000]),
        }),
        Frame::Data(Data {
            seq: 0,
            pts: 0,
            flags: DataFlags::NONE,
            payload: Bytes::new(),
        }),
        Frame::Ack { through: 9 },
        Frame::End { final_seq: 10 },
        Frame::Error(ErrorFrame {
            code: ErrorCode::Unauthorized,
            message: "token expired — ask the director again".into(),
        }),
        Frame::Error(ErrorFrame {
            code: ErrorCode::Unknown(0xBEEF),
            message: String::new(),
        }),
        Frame::Ping(1),
        Frame::Pong(u64::MAX),
    ]
}

fn decode_all(bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
    let mut dec = Decoder::default();
    let mut src = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(f) = dec.decode_eof(&mut src)? {
        out.push(f);
    }
    Ok(out)
}

fn enc(frame: &Frame) -> Vec<u8> {
    frame.encode_to_vec().unwrap()
}

#[test]
fn every_frame_round_trips_alone_and_back_to_back() {
    let frames = one_of_each();
    let mut all = BytesMut::new();
    for f in &frames {
        let bytes = enc(f);
        assert_eq!(bytes.len(), f.encoded_len().unwrap());
        assert_eq!(decode_all(&bytes).unwrap(), vec![f.clone()], "{f:?}");
        assert_eq!(Decoder::default().decode_message(&bytes[..]).unwrap(), *f);
        f.check(&Limits::default()).unwrap();
        encode(f, &mut all).unwrap();
    }
    assert_eq!(decode_all(&all).unwrap(), frames);
}

#[test]
fn every_byte_at_a_time_split_decodes_the_same() {
    let frames = one_of_each();
    let mut wire = BytesMut::new();
    for f in &frames {
        encode(f, &mut wire).unwrap();
    }
    let mut dec = Decoder::default();
    let mut src = BytesMut::new();
    let mut out = Vec::new();
    for &b in wire.iter() {
        src.put_u8(b);
        while let Some(f) = dec.decode(&mut src).unwrap() {
            out.push(f);
        }
    }
    assert!(src.is_empty());
    assert_eq!(out, frames);
}

#[test]
fn golden_data_frame() {
    let frame = Frame::Data(Data {
        seq: 1,
        pts: 2000,
        flags: DataFlags::KEYFRAME,
        payload: Bytes::from_static(b"abc"),
    });
    #[rustfmt::skip]
    let golden: &[u8] = &[
        0x46, 0x4D, 0x01, 0x03, 0x01, 0x00, 0x00, 0x00, 0x17, // FM v1 DATA keyframe len=23
        0, 0, 0, 0, 0, 0, 0, 1,                              // seq 1
        0, 0, 0, 0, 0, 0, 0x07, 0xD0,                        // pts 2000 µs
        b'a', b'b', b'c',                                    // payload
        0xF7, 0xDB, 0xCE, 0x14,                              // crc32c(header..payload)
    ];
    assert_eq!(enc(&frame), golden);
    assert_eq!(decode_all(golden).unwrap(), vec![frame]);
}

#[test]
fn golden_hello_frame() {
    let frame = Frame::Hello(hello());
    #[rustfmt::skip]
    let golden: &[u8] = &[
        0x46, 0x4D, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x14, // FM v1 HELLO len=20
        0x01,                                                // max_version 1
        0x01,                                                // role primary
        0x04, b'c', b'a', b'm', b'1',                        // stream "cam1"
        0x00, 0x02, b't', b'k',                              // token "tk"
        0x01, 0, 0, 0, 0, 0, 0, 0, 5,                        // resume_from Some(5)
    ];
    assert_eq!(enc(&frame), golden);
    assert_eq!(decode_all(golden).unwrap(), vec![frame]);
}

#[test]
fn data_payload_is_zero_copy_from_the_receive_buffer() {
    let frame = Frame::Data(Data {
        seq: 3,
        pts: 4,
        flags: DataFlags::NONE,
        payload: Bytes::from(vec![1u8; 4096]),
    });
    let mut src = BytesMut::from(&enc(&frame)[..]);
    let base = src.as_ptr() as usize;
    let Some(Frame::Data(d)) = Decoder::default().decode(&mut src).unwrap() else {
        panic!("expected DATA");
    };
    assert_eq!(d.payload.as_ptr() as usize, base + HEADER_LEN + 16);
}

fn header(ty: u8, flags: u8, len: u32) -> Vec<u8> {
    let mut v = vec![0x46, 0x4D, VERSION, ty, flags];
    v.extend_from_slice(&len.to_be_bytes());
    v
}

#[test]
fn header_bytes_are_checked_as_soon_as_they_arrive() {
    let mut dec = Decoder::default();
    let err = |bytes: &[u8]| {
        let mut d = dec.clone();
        d.decode(&mut BytesMut::from(bytes)).unwrap_err()
    };
    assert_eq!(
        err(b"G"),
        FrameError::BadMagic {
            offset: 0,
            got: b'G'
        }
    );
    assert_eq!(
        err(b"Fx"),
        FrameError::BadMagic {
            offset: 1,
            got: b'x'
        }
    );
    assert_eq!(
        err(b"FM\x02"),
        FrameError::UnsupportedVersion {
            got: 2,
            supported: 1
        }
    );
    assert_eq!(err(b"FM\x01\x09"), FrameError::UnknownType(9));
    assert_eq!(err(b"FM\x01\x00"), FrameError::UnknownType(0));
    assert_eq!(
        err(b"FM\x01\x04\x01"),
        FrameError::ReservedFlags {
            frame: FrameType::Ack,
            flags: 1,
            allowed: 0
        }
    );
    assert_eq!(
        err(b"FM\x01\x03\x08"),
        FrameError::ReservedFlags {
            frame: FrameType::Data,
            flags: 8,
            allowed: 7
        }
    );
    // A valid prefix is just "not yet".
    for n in 0..HEADER_LEN {
        let mut src = BytesMut::from(&header(3, 1, 100)[..n]);
        assert_eq!(dec.decode(&mut src).unwrap(), None);
    }
}

#[test]
fn over_limit_length_is_rejected_from_the_header_without_reserving() {
    let limits = Limits::default();
    let mut dec = Decoder::new(limits);
    let mut src = BytesMut::from(&header(3, 0, u32::MAX)[..]);
    let cap = src.capacity();
    assert_eq!(
        dec.decode(&mut src).unwrap_err(),
        FrameError::TooLarge {
            len: u64::from(u32::MAX) + 9,
            max: limits.max_frame_len
        }
    );
    assert_eq!(src.capacity(), cap);
    assert_eq!(src.len(), HEADER_LEN, "header errors leave src untouched");

    // In the frame limit but over the payload limit.
    let small = Limits {
        max_payload: 10,
        ..limits
    };
    let mut src = BytesMut::from(&header(3, 0, 31)[..]);
    assert_eq!(
        Decoder::new(small).decode(&mut src).unwrap_err(),
        FrameError::FieldTooLong {
            field: "DATA payload",
            len: 11,
            max: 10
        }
    );
    // A legal length reserves room for the rest, and no more than the frame.
    let mut src = BytesMut::from(&header(3, 0, 1000)[..]);
    assert_eq!(dec.decode(&mut src).unwrap(), None);
    assert!(src.capacity() >= 1009);
}

#[test]
fn fixed_size_bodies_are_checked_from_the_header() {
    let mut dec = Decoder::default();
    let mut short = BytesMut::from(&header(4, 0, 7)[..]);
    assert!(matches!(
        dec.decode(&mut short),
        Err(FrameError::Truncated {
            frame: FrameType::Ack,
            ..
        })
    ));
    let mut long = BytesMut::from(&header(7, 0, 9)[..]);
    assert_eq!(
        dec.decode(&mut long).unwrap_err(),
        FrameError::TrailingBytes {
            frame: FrameType::Ping,
            extra: 1
        }
    );
    let mut data = BytesMut::from(&header(3, 0, 19)[..]);
    assert!(matches!(
        dec.decode(&mut data),
        Err(FrameError::Truncated {
            frame: FrameType::Data,
            needed: 20,
            available: 19,
            ..
        })
    ));
}

#[test]
fn crc_covers_header_and_payload() {
    let bytes = enc(&Frame::Data(Data {
        seq: 1,
        pts: 2,
        flags: DataFlags::KEYFRAME,
        payload: Bytes::from_static(b"hello"),
    }));
    // Flip the keyframe flag to discontinuity: header still valid, CRC catches it.
    let mut flags = bytes.clone();
    flags[4] = DataFlags::DISCONTINUITY.bits();
    assert!(matches!(decode_all(&flags), Err(FrameError::BadCrc { .. })));
    let mut payload = bytes.clone();
    payload[HEADER_LEN + 16] ^= 0x80;
    assert!(matches!(
        decode_all(&payload),
        Err(FrameError::BadCrc { .. })
    ));
    let mut seq = bytes;
    seq[HEADER_LEN + 7] ^= 1;
    let err = decode_all(&seq).unwrap_err();
    assert_eq!(err.code(), ErrorCode::BadCrc);
}

fn hello_body(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut body = Vec::new();
    f(&mut body);
    let mut v = header(1, 0, body.len() as u32);
    v.extend_from_slice(&body);
    v
}

#[test]
fn hello_field_errors() {
    let base = |role: u8, sid: &[u8], tag: u8| {
        hello_body(|b| {
            b.extend_from_slice(&[1, role, sid.len() as u8]);
            b.extend_from_slice(sid);
            b.extend_from_slice(&[0, 0, tag]);
        })
    };
    assert!(decode_all(&base(1, b"ok", 0)).is_ok());
    assert!(matches!(
        decode_all(&base(3, b"ok", 0)),
        Err(FrameError::BadValue {
            field: "HELLO role",
            got: 3,
            ..
        })
    ));
    assert!(matches!(
        decode_all(&base(1, b"ok", 2)),
        Err(FrameError::BadValue {
            field: "HELLO resume_tag",
            ..
        })
    ));
    assert!(matches!(
        decode_all(&base(1, b"ok", 1)),
        Err(FrameError::Truncated {
            field: "resume_from",
            ..
        })
    ));
    assert!(matches!(
        decode_all(&base(1, b"..x", 0)),
        Err(FrameError::BadStreamId {
            reason: crate::StreamIdError::BadStart { ch: '.' }
        })
    ));
    assert!(matches!(
        decode_all(&base(1, b"", 0)),
        Err(FrameError::BadStreamId {
            reason: crate::StreamIdError::Empty
        })
    ));
    let long = vec![b'a'; 129];
    assert!(matches!(
        decode_all(&base(1, &long, 0)),
        Err(FrameError::BadStreamId {
            reason: crate::StreamIdError::TooLong { len: 129, max: 128 }
        })
    ));
    // Token over the configured limit, announced before the bytes.
    let big_token = hello_body(|b| {
        b.extend_from_slice(&[1, 1, 1, b'a']);
        b.extend_from_slice(&5000u16.to_be_bytes());
        b.extend_from_slice(&vec![0; 5000]);
        b.push(0);
    });
    assert_eq!(
        decode_all(&big_token).unwrap_err(),
        FrameError::FieldTooLong {
            field: "HELLO token",
            len: 5000,
            max: 4096
        }
    );
    let mut trailing = base(2, b"ok", 0);
    trailing.push(0);
    trailing[8] += 1;
    assert_eq!(
        decode_all(&trailing).unwrap_err(),
        FrameError::TrailingBytes {
            frame: FrameType::Hello,
            extra: 1
        }
    );
    let zero_version = hello_body(|b| b.extend_from_slice(&[0, 1, 1, b'a', 0, 0, 0]));
    assert!(matches!(
        decode_all(&zero_version),
        Err(FrameError::BadValue {
            field: "HELLO max_version",
            ..
        })
    ));
}

#[test]
fn text_fields_must_be_utf8_and_short() {
    let mut v = header(6, 0, 6);
    v.extend_from_slice(&[0, 1, 0, 2, 0xC3, 0x28]);
    assert_eq!(
        decode_all(&v).unwrap_err(),
        FrameError::BadUtf8 {
            field: "ERROR message"
        }
    );
    let mut v = header(6, 0, 4 + 1025);
    v.extend_from_slice(&[0, 1, 0x04, 0x01]);
    v.extend_from_slice(&[b'x'; 1025]);
    assert_eq!(
        decode_all(&v).unwrap_err(),
        FrameError::FieldTooLong {
            field: "ERROR message",
            len: 1025,
            max: 1024
        }
    );
    let too_long = Frame::Error(ErrorFrame {
        code: ErrorCode::Internal,
        message: "x".repeat(1025),
    });
    let mut dst = BytesMut::from(&b"keep"[..]);
    assert!(matches!(
        encode(&too_long, &mut dst),
        Err(FrameError::FieldTooLong { .. })
    ));
    assert_eq!(&dst[..], b"keep", "a failed encode leaves dst unchanged");
    let mut v = header(2, 0, 22);
    v.extend_from_slice(&[0; 20]);
    v.extend_from_slice(&[1, 0xFF]);
    assert_eq!(
        decode_all(&v).unwrap_err(),
        FrameError::BadUtf8 {
            field: "WELCOME server_id"
        }
    );
}

#[test]
fn eof_and_message_framing() {
    let bytes = enc(&Frame::Ack { through: 1 });
    let mut dec = Decoder::default();
    let mut half = BytesMut::from(&bytes[..12]);
    assert_eq!(
        dec.decode_eof(&mut half).unwrap_err(),
        FrameError::Incomplete {
            needed: 17,
            got: 12
        }
    );
    let mut tiny = BytesMut::from(&bytes[..3]);
    assert_eq!(
        dec.decode_eof(&mut tiny).unwrap_err(),
        FrameError::Incomplete { needed: 9, got: 3 }
    );
    assert_eq!(
        dec.decode_message(BytesMut::new()).unwrap_err(),
        FrameError::Incomplete { needed: 9, got: 0 }
    );
    let mut two = bytes.clone();
    two.extend_from_slice(&bytes);
    assert_eq!(
        dec.decode_message(&two[..]).unwrap_err(),
        FrameError::ExtraBytesInMessage { extra: 17 }
    );
    assert_eq!(dec.decode_eof(&mut BytesMut::new()).unwrap(), None);
}

#[test]
fn check_applies_a_peers_limits() {
    let limits = Limits {
        max_frame_len: 100,
        max_payload: 50,
        max_token: 4,
        max_stream_id: 3,
    };
    let data = |n: usize| {
        Frame::Data(Data {
            seq: 0,
            pts: 0,
            flags: DataFlags::NONE,
            payload: Bytes::from(vec![0; n]),
        })
    };
    assert!(data(50).check(&limits).is_ok());
    assert!(matches!(
        data(51).check(&limits),
        Err(FrameError::FieldTooLong { .. })
    ));
    assert!(matches!(
        data(80).check(&limits),
        Err(FrameError::TooLarge { len: 109, max: 100 })
    ));
    let h = |sid: &str, token: &'static [u8]| {
        Frame::Hello(Hello {
            stream: stream(sid),
            token: Bytes::from_static(token),
            ..hello()
        })
    };
    assert!(h("abc", b"1234").check(&limits).is_ok());
    assert!(matches!(
        h("abcd", b"").check(&limits),
        Err(FrameError::BadStreamId { .. })
    ));
    assert!(matches!(
        h("a", b"12345").check(&limits),
        Err(FrameError::FieldTooLong { .. })
    ));
    // And the decoder with those limits agrees.
    let mut dec = Decoder::new(limits);
    assert!(matches!(
        dec.decode(&mut BytesMut::from(&enc(&h("abcd", b""))[..])),
        Err(FrameError::BadStreamId { .. })
    ));
}

#[test]
fn error_codes_round_trip_and_map() {
    for code in 0..=20u16 {
        assert_eq!(ErrorCode::from_u16(code).to_u16(), code);
    }
    assert_eq!(ErrorCode::from_u16(0x7777), ErrorCode::Unknown(0x7777));
    assert_eq!(ErrorCode::GoingAway.to_string(), "going_away (0x000a)");
    assert!(ErrorCode::Overloaded.is_retryable());
    assert!(!ErrorCode::Unauthorized.is_retryable());
    assert_eq!(
        FrameError::UnsupportedVersion {
            got: 9,
            supported: 1
        }
        .code(),
        ErrorCode::UnsupportedVersion
    );
    assert_eq!(
        FrameError::TooLarge { len: 1, max: 0 }.code(),
        ErrorCode::TooLarge
    );
    assert_eq!(FrameError::UnknownType(0).code(), ErrorCode::Protocol);
    let msg = FrameError::BadMagic { offset: 0, got: 0 }.to_string();
    assert!(msg.contains("0x46 0x4D"), "{msg}");
}
