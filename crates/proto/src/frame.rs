//! The native stream protocol's frames and their codec (this is the protocol specification).
//!
//! **What.** A device uploads a live stream as sequence-numbered DATA frames to two entry servers
//! at once; each server acknowledges what its log holds. This module turns [`Frame`] values into
//! bytes ([`encode`]) and bytes into frames ([`Decoder`]), and nothing else.
//!
//! **Why a pure codec.** The same frames travel over TCP (optionally TLS) and over WebSocket, and
//! one session state machine drives both. Keeping the codec free of I/O lets that machine be
//! generic over the transport, and lets us feed the decoder every split of the byte stream and
//! arbitrary garbage in tests (see the proptests, `tests/corpus/` and the standalone cargo-fuzz
//! target in `fuzz/`).
//!
//! **What not.** No sockets, clocks or buffering policy; no session logic (who sends HELLO when,
//! resume, ack pacing, token checks): that is the session layer's. The decoder has the shape of a
//! `tokio_util::codec::Decoder` (`decode`, `decode_eof`) without depending on tokio-util, so the
//! session layer can wrap it in a few lines.
//!
//! # Framing
//!
//! Every frame is a fixed 9-byte header followed by a body. All integers are big-endian.
//!
//! | offset | size | field | rule |
//! |---|---|---|---|
//! | 0 | 2 | magic | `0x46 0x4D` (`"FM"`) |
//! | 2 | 1 | version | `1` ([`VERSION`]) |
//! | 3 | 1 | type | [`FrameType`]: 1 HELLO, 2 WELCOME, 3 DATA, 4 ACK, 5 END, 6 ERROR, 7 PING, 8 PONG |
//! | 4 | 1 | flags | per type; only DATA defines bits ([`DataFlags`]), others must send 0 |
//! | 5 | 4 | body_len | u32; `9 + body_len` must be ≤ [`Limits::max_frame_len`] |
//! | 9 | body_len | body | per type, below |
//!
//! On TCP frames follow each other back to back. On WebSocket each binary message carries
//! exactly one frame ([`Decoder::decode_message`]).
//!
//! # Bodies
//!
//! | type | body |
//! |---|---|
//! | HELLO (1) | `max_version u8` · `role u8` (1 primary, 2 backup) · `stream_len u8` · `stream` · `token_len u16` · `token` · `resume_tag u8` (0 none, 1 present) · `resume_from u64` (only when the tag is 1) |
//! | WELCOME (2) | `next_seq u64` · `max_payload u32` · `max_frame_len u32` · `ack_interval_ms u32` · `server_id_len u8` · `server_id` (UTF-8) |
//! | DATA (3) | `seq u64` · `pts i64` (µs) · `payload` (the rest, `body_len - 20` bytes) · `crc32c u32` |
//! | ACK (4) | `through u64` |
//! | END (5) | `final_seq u64` |
//! | ERROR (6) | `code u16` ([`ErrorCode`]) · `message_len u16` · `message` (UTF-8, ≤ 1024 bytes) |
//! | PING (7) / PONG (8) | `nonce u64` |
//!
//! **DATA's CRC32C** (Castagnoli) covers every byte of the frame before the CRC field: the
//! 9-byte header (so the flags and the length are protected), seq, pts and payload. Flipping any
//! bit of a DATA frame therefore yields either a header error or a CRC mismatch.
//!
//! **Strictness.** A body must hold exactly its fields: too short is [`FrameError::Truncated`],
//! too long is [`FrameError::TrailingBytes`]. Undefined flag bits, role bytes, resume tags and
//! versions are errors. Unknown ERROR codes are *not* errors: they are kept as
//! [`ErrorCode::Unknown`]. The stream id obeys [`StreamId`]'s rules (`[A-Za-z0-9._-]`, 1..=128,
//! first a letter or digit) and [`Limits::max_stream_id`]; the token is opaque bytes up to
//! [`Limits::max_token`]; the payload is at most [`Limits::max_payload`].
//!
//! **Early rejection.** The decoder checks each header byte as soon as it has arrived (a wrong
//! first byte fails after one byte), and checks the announced length against the limits — and,
//! for fixed-size bodies, against the exact size — before waiting for or reserving space for the
//! body. It never reserves more than `max_frame_len` bytes on the header's word.
//!
//! # Semantics (for the session layer)
//!
//! * HELLO (client → server): `max_version` is the highest protocol version the client speaks (≥ 1);
//!   `role` is its path; `token` is the director's signed assignment token; `resume_from` is the
//!   first sequence number the client still holds unacknowledged, if it is resuming.
//! * WELCOME (server → client): `next_seq` is the sequence number the server expects next (its log
//!   holds everything before it); the limits tell the client how large a payload and a frame may
//!   be and how often acks will come.
//! * DATA: `seq` increases by one per chunk; `pts` is the presentation time in microseconds
//!   (signed: pre-roll may be negative).
//! * ACK(through): every DATA up to and including `through` is durable in the server's log.
//! * END(final_seq): the stream ended normally after `final_seq`.
//! * ERROR(code, message): the sender closes the session; `message` is for humans.
//! * PING(nonce) is answered by PONG(nonce), either direction.
//!
//! After any decode error the byte stream cannot be resynchronised: answer with ERROR
//! ([`FrameError::code`]) and close.

mod error;

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub use self::error::{ErrorCode, FrameError};
use crate::ids::{MAX_STREAM_ID_LEN, Role, StreamId};

/// The two magic bytes every frame starts with: `"FM"`.
pub const MAGIC: [u8; 2] = *b"FM";
/// The protocol version this codec speaks.
pub const VERSION: u8 = 1;
/// Length of the fixed frame header.
pub const HEADER_LEN: usize = 9;
/// Bytes of a DATA body that are not payload: seq (8) + pts (8) + crc32c (4).
pub const DATA_OVERHEAD: usize = 20;
/// Hard maximum of an ERROR frame's message, in bytes.
pub const MAX_ERROR_MESSAGE: usize = 1024;
/// Hard maximum of a WELCOME frame's server id, in bytes (its length is one byte).
pub const MAX_SERVER_ID: usize = 255;

/// Size limits the decoder enforces (and [`Frame::check`] checks before sending).
///
/// A server announces its `max_payload` and `max_frame_len` in WELCOME so a client can size its
/// chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest whole frame (9-byte header + body) accepted. Default 1 MiB + 64 KiB.
    pub max_frame_len: u32,
    /// Largest DATA payload accepted. Default 1 MiB.
    pub max_payload: u32,
    /// Largest HELLO token accepted. Default 4 KiB.
    pub max_token: u16,
    /// Longest stream id accepted (capped at 128 whatever this says). Default 128.
    pub max_stream_id: u8,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_len: 1024 * 1024 + 64 * 1024,
            max_payload: 1024 * 1024,
            max_token: 4096,
            max_stream_id: MAX_STREAM_ID_LEN as u8,
        }
    }
}

/// A frame's type, the header's fourth byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    /// 0x01
    Hello = 1,
    /// 0x02
    Welcome = 2,
    /// 0x03
    Data = 3,
    /// 0x04
    Ack = 4,
    /// 0x05
    End = 5,
    /// 0x06
    Error = 6,
    /// 0x07
    Ping = 7,
    /// 0x08
    Pong = 8,
}

impl FrameType {
    /// The type for a header byte, if it names one.
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => FrameType::Hello,
            2 => FrameType::Welcome,
            3 => FrameType::Data,
            4 => FrameType::Ack,
            5 => FrameType::End,
            6 => FrameType::Error,
            7 => FrameType::Ping,
            8 => FrameType::Pong,
            _ => return None,
        })
    }

    /// The upper-case name used in the spec and in error messages.
    pub fn name(self) -> &'static str {
        match self {
            FrameType::Hello => "HELLO",
            FrameType::Welcome => "WELCOME",
            FrameType::Data => "DATA",
            FrameType::Ack => "ACK",
            FrameType::End => "END",
            FrameType::Error => "ERROR",
            FrameType::Ping => "PING",
            FrameType::Pong => "PONG",
        }
    }

    /// The header flag bits this type defines.
    fn allowed_flags(self) -> u8 {
        match self {
            FrameType::Data => DataFlags::ALL.0,
            _ => 0,
        }
    }

    /// The exact body length of fixed-size frames.
    fn fixed_body_len(self) -> Option<usize> {
        match self {
            FrameType::Ack | FrameType::End | FrameType::Ping | FrameType::Pong => Some(8),
            _ => None,
        }
    }
}

impl std::fmt::Display for FrameType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// DATA flags, carried in the header's flags byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DataFlags(u8);

impl DataFlags {
    /// No flags.
    pub const NONE: DataFlags = DataFlags(0);
    /// Bit 0: the payload starts with a keyframe (a viewer can start decoding here).
    pub const KEYFRAME: DataFlags = DataFlags(0x01);
    /// Bit 1: the stream is discontinuous before this chunk (encoder restart, timestamp jump).
    pub const DISCONTINUITY: DataFlags = DataFlags(0x02);
    /// Bit 2: this chunk ends a group of pictures.
    pub const END_OF_GOP: DataFlags = DataFlags(0x04);
    /// Every defined bit.
    pub const ALL: DataFlags = DataFlags(0x07);

    /// The flags for a byte, if it sets only defined bits.
    pub fn from_bits(bits: u8) -> Option<Self> {
        (bits & !Self::ALL.0 == 0).then_some(DataFlags(bits))
    }

    /// The flags for a byte, dropping undefined bits.
    pub fn from_bits_truncate(bits: u8) -> Self {
        DataFlags(bits & Self::ALL.0)
    }

    /// The byte on the wire.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: DataFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether the keyframe bit is set.
    pub fn is_keyframe(self) -> bool {
        self.contains(Self::KEYFRAME)
    }
}

impl std::ops::BitOr for DataFlags {
    type Output = DataFlags;
    fn bitor(self, rhs: DataFlags) -> DataFlags {
        DataFlags(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for DataFlags {
    fn bitor_assign(&mut self, rhs: DataFlags) {
        self.0 |= rhs.0;
    }
}

/// HELLO: the client opens an upload session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Highest protocol version the client speaks (≥ 1).
    pub max_version: u8,
    /// Which path of the stream this session is.
    pub role: Role,
    /// The stream.
    pub stream: StreamId,
    /// The director's signed assignment token (opaque here).
    pub token: Bytes,
    /// First sequence number the client still holds unacknowledged, when resuming.
    pub resume_from: Option<u64>,
}

/// WELCOME: the server accepts the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The sequence number the server expects next.
    pub next_seq: u64,
    /// Which server this is (UTF-8, ≤ 255 bytes).
    pub server_id: String,
    /// Largest DATA payload the server accepts.
    pub max_payload: u32,
    /// Largest frame the server accepts (header + body).
    pub max_frame_len: u32,
    /// How often the server intends to send ACK, in milliseconds (a hint).
    pub ack_interval_ms: u32,
}

/// DATA: one chunk of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data {
    /// Sequence number, one per chunk.
    pub seq: u64,
    /// Presentation time in microseconds.
    pub pts: i64,
    /// Keyframe, discontinuity, end of GOP.
    pub flags: DataFlags,
    /// The chunk (decoded zero-copy out of the receive buffer).
    pub payload: Bytes,
}

/// ERROR: the sender is closing the session, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFrame {
    /// Machine-readable reason.
    pub code: ErrorCode,
    /// Human-readable detail (UTF-8, ≤ 1024 bytes).
    pub message: String,
}

/// One frame of the native stream protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Client opens a session.
    Hello(Hello),
    /// Server accepts it.
    Welcome(Welcome),
    /// A chunk of the stream.
    Data(Data),
    /// Everything through this sequence number is durable.
    Ack {
        /// Last sequence number covered (inclusive).
        through: u64,
    },
    /// The stream ended normally.
    End {
        /// The last sequence number of the stream.
        final_seq: u64,
    },
    /// The sender closes the session.
    Error(ErrorFrame),
    /// Keepalive request.
    Ping(u64),
    /// Keepalive answer, echoing the PING's nonce.
    Pong(u64),
}

impl Frame {
    /// The frame's type.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Hello(_) => FrameType::Hello,
            Frame::Welcome(_) => FrameType::Welcome,
            Frame::Data(_) => FrameType::Data,
            Frame::Ack { .. } => FrameType::Ack,
            Frame::End { .. } => FrameType::End,
            Frame::Error(_) => FrameType::Error,
            Frame::Ping(_) => FrameType::Ping,
            Frame::Pong(_) => FrameType::Pong,
        }
    }

    fn flags(&self) -> u8 {
        match self {
            Frame::Data(d) => d.flags.bits(),
            _ => 0,
        }
    }

    /// The body length, after checking every field fits its wire width and hard maximum.
    fn body_len(&self) -> Result<usize, FrameError> {
        let len = match self {
            Frame::Hello(h) => {
                if h.max_version == 0 {
                    return Err(FrameError::BadValue {
                        field: "HELLO max_version",
                        got: 0,
                        accepted: "1..=255",
                    });
                }
                check_len("HELLO token", h.token.len(), u16::MAX as usize)?;
                3 + h.stream.len()
                    + 2
                    + h.token.len()
                    + 1
                    + if h.resume_from.is_some() { 8 } else { 0 }
            }
            Frame::Welcome(w) => {
                check_len("WELCOME server_id", w.server_id.len(), MAX_SERVER_ID)?;
                8 + 4 + 4 + 4 + 1 + w.server_id.len()
            }
            Frame::Data(d) => {
                let max = u32::MAX as usize - HEADER_LEN - DATA_OVERHEAD;
                check_len("DATA payload", d.payload.len(), max)?;
                DATA_OVERHEAD + d.payload.len()
            }
            Frame::Ack { .. } | Frame::End { .. } | Frame::Ping(_) | Frame::Pong(_) => 8,
            Frame::Error(e) => {
                check_len("ERROR message", e.message.len(), MAX_ERROR_MESSAGE)?;
                4 + e.message.len()
            }
        };
        Ok(len)
    }

    /// The number of bytes [`encode`] writes for this frame.
    pub fn encoded_len(&self) -> Result<usize, FrameError> {
        Ok(HEADER_LEN + self.body_len()?)
    }

    /// Checks the frame against a peer's limits, exactly as that peer's decoder would, so a
    /// sender can refuse to send what would be rejected.
    pub fn check(&self, limits: &Limits) -> Result<(), FrameError> {
        let len = self.encoded_len()?;
        if len as u64 > u64::from(limits.max_frame_len) {
            return Err(FrameError::TooLarge {
                len: len as u64,
                max: limits.max_frame_len,
            });
        }
        match self {
            Frame::Data(d) => {
                check_len("DATA payload", d.payload.len(), limits.max_payload as usize)
            }
            Frame::Hello(h) => {
                check_len("HELLO token", h.token.len(), usize::from(limits.max_token))?;
                let max = usize::from(limits.max_stream_id).min(MAX_STREAM_ID_LEN);
                if h.stream.len() > max {
                    return Err(FrameError::BadStreamId {
                        reason: crate::ids::StreamIdError::TooLong {
                            len: h.stream.len(),
                            max,
                        },
                    });
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Encodes the frame into a new vector.
    pub fn encode_to_vec(&self) -> Result<Vec<u8>, FrameError> {
        let mut buf = BytesMut::new();
        encode(self, &mut buf)?;
        Ok(buf.to_vec())
    }
}

fn check_len(field: &'static str, len: usize, max: usize) -> Result<(), FrameError> {
    if len > max {
        Err(FrameError::FieldTooLong { field, len, max })
    } else {
        Ok(())
    }
}

/// Appends the frame's bytes to `dst`.
///
/// Fails, leaving `dst` unchanged, only when a field cannot be represented (token over 65535
/// bytes, server id over 255, error message over 1024, `max_version` 0). It does not check a
/// peer's [`Limits`]: call [`Frame::check`] for that.
pub fn encode(frame: &Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
    let body_len = frame.body_len()?;
    dst.reserve(HEADER_LEN + body_len);
    let start = dst.len();
    dst.put_slice(&MAGIC);
    dst.put_u8(VERSION);
    dst.put_u8(frame.frame_type() as u8);
    dst.put_u8(frame.flags());
    // body_len() bounds every body well below u32::MAX.
    dst.put_u32(body_len as u32);
    match frame {
        Frame::Hello(h) => {
            dst.put_u8(h.max_version);
            dst.put_u8(h.role.wire_code());
            dst.put_u8(h.stream.len() as u8);
            dst.put_slice(h.stream.as_str().as_bytes());
            dst.put_u16(h.token.len() as u16);
            dst.put_slice(&h.token);
            match h.resume_from {
                None => dst.put_u8(0),
                Some(seq) => {
                    dst.put_u8(1);
                    dst.put_u64(seq);
                }
            }
        }
        Frame::Welcome(w) => {
            dst.put_u64(w.next_seq);
            dst.put_u32(w.max_payload);
            dst.put_u32(w.max_frame_len);
            dst.put_u32(w.ack_interval_ms);
            dst.put_u8(w.server_id.len() as u8);
            dst.put_slice(w.server_id.as_bytes());
        }
        Frame::Data(d) => {
            dst.put_u64(d.seq);
            dst.put_i64(d.pts);
            dst.put_slice(&d.payload);
            let crc = crc32c::crc32c(&dst[start..]);
            dst.put_u32(crc);
        }
        Frame::Ack { through: n }
        | Frame::End { final_seq: n }
        | Frame::Ping(n)
        | Frame::Pong(n) => {
            dst.put_u64(*n);
        }
        Frame::Error(e) => {
            dst.put_u16(e.code.to_u16());
            dst.put_u16(e.message.len() as u16);
            dst.put_slice(e.message.as_bytes());
        }
    }
    debug_assert_eq!(dst.len() - start, HEADER_LEN + body_len);
    Ok(())
}

/// A validated frame header.
#[derive(Debug, Clone, Copy)]
struct Header {
    ty: FrameType,
    flags: u8,
    body_len: usize,
}

/// Incremental frame decoder: feed it the bytes received so far, in any split.
///
/// ```
/// use bytes::BytesMut;
/// use proto::{Decoder, Frame, Limits, encode};
///
/// let mut wire = BytesMut::new();
/// encode(&Frame::Ping(7), &mut wire).unwrap();
/// let mut dec = Decoder::new(Limits::default());
/// let mut rx = BytesMut::new();
/// rx.extend_from_slice(&wire[..4]);
/// assert_eq!(dec.decode(&mut rx).unwrap(), None); // not enough yet
/// rx.extend_from_slice(&wire[4..]);
/// assert_eq!(dec.decode(&mut rx).unwrap(), Some(Frame::Ping(7)));
/// ```
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    limits: Limits,
}

impl Decoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        Decoder { limits }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Decodes the next frame from the front of `src`.
    ///
    /// * `Ok(Some(frame))`: the frame's bytes were removed from `src`; call again for the next.
    /// * `Ok(None)`: `src` holds only the start of a frame (possibly nothing); read more. `src`
    ///   is untouched except that room for the rest of an announced, in-limit frame may be
    ///   reserved.
    /// * `Err(e)`: the stream is malformed. A header error leaves `src` as it was; a body error
    ///   removes the bad frame. Either way, the connection should be closed.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(header) = self.check_header(src)? else {
            return Ok(None);
        };
        let total = HEADER_LEN + header.body_len;
        if src.len() < total {
            // Bounded by max_frame_len: check_header rejected anything larger.
            src.reserve(total - src.len());
            return Ok(None);
        }
        let frame = src.split_to(total).freeze();
        parse_body(header, frame, &self.limits).map(Some)
    }

    /// Like [`decode`](Self::decode), for when no more bytes will come (end of stream): leftover
    /// bytes of an unfinished frame are an [`FrameError::Incomplete`] error.
    pub fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => {
                let needed = match self.check_header(src)? {
                    Some(h) => HEADER_LEN + h.body_len,
                    None => HEADER_LEN,
                };
                Err(FrameError::Incomplete {
                    needed,
                    got: src.len(),
                })
            }
        }
    }

    /// Decodes one WebSocket binary message, which must hold exactly one whole frame.
    pub fn decode_message(&mut self, msg: impl Into<BytesMut>) -> Result<Frame, FrameError> {
        let mut msg = msg.into();
        match self.decode_eof(&mut msg)? {
            None => Err(FrameError::Incomplete {
                needed: HEADER_LEN,
                got: 0,
            }),
            Some(_) if !msg.is_empty() => Err(FrameError::ExtraBytesInMessage { extra: msg.len() }),
            Some(frame) => Ok(frame),
        }
    }

    /// Checks as much of the header as has arrived; `Ok(None)` if it is not all there yet.
    fn check_header(&self, src: &[u8]) -> Result<Option<Header>, FrameError> {
        for (offset, (&got, &want)) in src.iter().zip(MAGIC.iter()).enumerate() {
            if got != want {
                return Err(FrameError::BadMagic { offset, got });
            }
        }
        match src.get(2) {
            Some(&got) if got != VERSION => {
                return Err(FrameError::UnsupportedVersion {
                    got,
                    supported: VERSION,
                });
            }
            _ => {}
        }
        let Some(&ty) = src.get(3) else {
            return Ok(None);
        };
        let ty = FrameType::from_u8(ty).ok_or(FrameError::UnknownType(ty))?;
        let Some(&flags) = src.get(4) else {
            return Ok(None);
        };
        let allowed = ty.allowed_flags();
        if flags & !allowed != 0 {
            return Err(FrameError::ReservedFlags {
                frame: ty,
                flags,
                allowed,
            });
        }
        let Some(len_bytes) = src.get(5..HEADER_LEN) else {
            return Ok(None);
        };
        let body_len = u32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
        let total = HEADER_LEN as u64 + u64::from(body_len);
        if total > u64::from(self.limits.max_frame_len) {
            return Err(FrameError::TooLarge {
                len: total,
                max: self.limits.max_frame_len,
            });
        }
        let body_len = body_len as usize;
        if let Some(fixed) = ty.fixed_body_len() {
            if body_len < fixed {
                return Err(FrameError::Truncated {
                    frame: ty,
                    field: "body",
                    needed: fixed,
                    available: body_len,
                });
            }
            if body_len > fixed {
                return Err(FrameError::TrailingBytes {
                    frame: ty,
                    extra: body_len - fixed,
                });
            }
        }
        if ty == FrameType::Data {
            let Some(payload) = body_len.checked_sub(DATA_OVERHEAD) else {
                return Err(FrameError::Truncated {
                    frame: ty,
                    field: "seq, pts and crc32c",
                    needed: DATA_OVERHEAD,
                    available: body_len,
                });
            };
            check_len("DATA payload", payload, self.limits.max_payload as usize)?;
        }
        Ok(Some(Header {
            ty,
            flags,
            body_len,
        }))
    }
}

/// Reads fields off a frame body, turning every shortfall into a typed error.
struct Reader {
    frame: FrameType,
    body: Bytes,
}

impl Reader {
    fn need(&self, field: &'static str, n: usize) -> Result<(), FrameError> {
        if self.body.remaining() < n {
            return Err(FrameError::Truncated {
                frame: self.frame,
                field,
                needed: n,
                available: self.body.remaining(),
            });
        }
        Ok(())
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, FrameError> {
        self.need(field, 1)?;
        Ok(self.body.get_u8())
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, FrameError> {
        self.need(field, 2)?;
        Ok(self.body.get_u16())
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, FrameError> {
        self.need(field, 4)?;
        Ok(self.body.get_u32())
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, FrameError> {
        self.need(field, 8)?;
        Ok(self.body.get_u64())
    }
    fn bytes(&mut self, field: &'static str, n: usize) -> Result<Bytes, FrameError> {
        self.need(field, n)?;
        Ok(self.body.split_to(n))
    }
    fn utf8(&mut self, field: &'static str, n: usize) -> Result<String, FrameError> {
        let raw = self.bytes(field, n)?;
        String::from_utf8(raw.to_vec()).map_err(|_| FrameError::BadUtf8 { field })
    }
    fn finish(self) -> Result<(), FrameError> {
        match self.body.remaining() {
            0 => Ok(()),
            extra => Err(FrameError::TrailingBytes {
                frame: self.frame,
                extra,
            }),
        }
    }
}

/// Parses a whole frame (header already validated) into a [`Frame`].
fn parse_body(header: Header, frame: Bytes, limits: &Limits) -> Result<Frame, FrameError> {
    let ty = header.ty;
    let mut r = Reader {
        frame: ty,
        body: frame.slice(HEADER_LEN..),
    };
    let out = match ty {
        FrameType::Hello => {
            let max_version = r.u8("max_version")?;
            if max_version == 0 {
                return Err(FrameError::BadValue {
                    field: "HELLO max_version",
                    got: 0,
                    accepted: "1..=255",
                });
            }
            let role = r.u8("role")?;
            let role = Role::from_wire_code(role).ok_or(FrameError::BadValue {
                field: "HELLO role",
                got: u64::from(role),
                accepted: "1 (primary), 2 (backup)",
            })?;
            let stream_len = usize::from(r.u8("stream_len")?);
            let stream = r.bytes("stream", stream_len)?;
            let stream = StreamId::from_bytes(&stream, usize::from(limits.max_stream_id))
                .map_err(|reason| FrameError::BadStreamId { reason })?;
            let token_len = usize::from(r.u16("token_len")?);
            check_len("HELLO token", token_len, usize::from(limits.max_token))?;
            let token = r.bytes("token", token_len)?;
            let resume_from = match r.u8("resume_tag")? {
                0 => None,
                1 => Some(r.u64("resume_from")?),
                other => {
                    return Err(FrameError::BadValue {
                        field: "HELLO resume_tag",
                        got: u64::from(other),
                        accepted: "0 (none), 1 (resume_from follows)",
                    });
                }
            };
            Frame::Hello(Hello {
                max_version,
                role,
                stream,
                token,
                resume_from,
            })
        }
        FrameType::Welcome => {
            let next_seq = r.u64("next_seq")?;
            let max_payload = r.u32("max_payload")?;
            let max_frame_len = r.u32("max_frame_len")?;
            let ack_interval_ms = r.u32("ack_interval_ms")?;
            let id_len = usize::from(r.u8("server_id_len")?);
            let server_id = r.utf8("WELCOME server_id", id_len)?;
            Frame::Welcome(Welcome {
                next_seq,
                server_id,
                max_payload,
                max_frame_len,
                ack_interval_ms,
            })
        }
        FrameType::Error => {
            let code = ErrorCode::from_u16(r.u16("code")?);
            let len = usize::from(r.u16("message_len")?);
            check_len("ERROR message", len, MAX_ERROR_MESSAGE)?;
            let message = r.utf8("ERROR message", len)?;
            Frame::Error(ErrorFrame { code, message })
        }
        FrameType::Ack => Frame::Ack {
            through: r.u64("through")?,
        },
        FrameType::End => Frame::End {
            final_seq: r.u64("final_seq")?,
        },
        FrameType::Ping => Frame::Ping(r.u64("nonce")?),
        FrameType::Pong => Frame::Pong(r.u64("nonce")?),
        FrameType::Data => return parse_data(header.flags, &frame),
    };
    r.finish()?;
    Ok(out)
}

/// Parses a whole DATA frame whose header (flags, `body_len >= DATA_OVERHEAD`, payload limit)
/// was validated, checking its CRC32C first.
fn parse_data(flags: u8, frame: &Bytes) -> Result<Frame, FrameError> {
    let crc_at = frame.len() - 4;
    let expected = crc32c::crc32c(&frame[..crc_at]);
    let mut crc = &frame[crc_at..];
    let got = crc.get_u32();
    if expected != got {
        return Err(FrameError::BadCrc { expected, got });
    }
    let mut fields = &frame[HEADER_LEN..HEADER_LEN + 16];
    let seq = fields.get_u64();
    let pts = fields.get_i64();
    Ok(Frame::Data(Data {
        seq,
        pts,
        flags: DataFlags::from_bits_truncate(flags),
        payload: frame.slice(HEADER_LEN + 16..crc_at),
    }))
}

#[cfg(test)]
mod tests;
