//! FLV tags as chunks: the pure codec behind RTMP ingest and HTTP-FLV playback.
//!
//! A stream ingested over RTMP is stored as one **FLV tag per chunk** (11-byte tag header, the
//! RTMP message body untouched, 4-byte previous-tag-size), chunk pts = the RTMP timestamp in µs,
//! `KEYFRAME` on video keyframes. So the plain byte stream (`/v1/streams/{id}/live`) of such a
//! stream is an FLV body without the file header, and HTTP-FLV is [`header`] + the cached
//! `onMetaData` and codec-configuration tags ([`Head`]) + the chunks from the latest keyframe.
//!
//! [`Head`] is filled by looking at every chunk a stream publishes ([`Head::observe`]), on ingest
//! and relay nodes alike. A chunk is taken for an FLV tag only when its structure checks out
//! exactly (type 8/9/18, data size + 15 = chunk length, previous-tag-size = data size + 11), so
//! a native-protocol stream with arbitrary payloads is recognised as "not FLV".
//!
//! Enhanced RTMP (the `IsExHeader` bit: HEVC, AV1, VP9 by FourCC; audio `ExHeader`) passes
//! through untouched; its `SequenceStart` packets are recognised as codec configuration.
//!
//! What this is not: a demuxer or a remuxer. Payloads are never rewritten.

use bytes::{BufMut, Bytes, BytesMut};

pub const AUDIO: u8 = 8;
pub const VIDEO: u8 = 9;
pub const SCRIPT: u8 = 18;

/// One FLV tag (header, data, previous-tag-size) as a chunk payload.
pub fn tag(kind: u8, ts_ms: u32, data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(data.len() + 15);
    b.put_u8(kind);
    let len = data.len() as u32;
    b.put_slice(&len.to_be_bytes()[1..]);
    b.put_slice(&ts_ms.to_be_bytes()[1..]);
    b.put_u8((ts_ms >> 24) as u8);
    b.put_slice(&[0, 0, 0]);
    b.put_slice(data);
    b.put_u32(len + 11);
    b.freeze()
}

/// The FLV file header and PreviousTagSize0 (13 bytes).
pub fn header(audio: bool, video: bool) -> [u8; 13] {
    let flags = (u8::from(audio) << 2) | u8::from(video);
    [b'F', b'L', b'V', 1, flags, 0, 0, 0, 9, 0, 0, 0, 0]
}

/// A chunk payload seen as an FLV tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TagRef<'a> {
    pub kind: u8,
    pub ts_ms: u32,
    pub data: &'a [u8],
}

/// The chunk as an FLV tag, if it is exactly one.
pub fn parse(p: &[u8]) -> Option<TagRef<'_>> {
    if p.len() < 15 || !matches!(p[0], AUDIO | VIDEO | SCRIPT) {
        return None;
    }
    let len = u32::from_be_bytes([0, p[1], p[2], p[3]]) as usize;
    if len + 15 != p.len() {
        return None;
    }
    let prev = u32::from_be_bytes([p[len + 11], p[len + 12], p[len + 13], p[len + 14]]) as usize;
    if prev != len + 11 {
        return None;
    }
    let ts_ms = u32::from_be_bytes([p[7], p[4], p[5], p[6]]);
    Some(TagRef {
        kind: p[0],
        ts_ms,
        data: &p[11..11 + len],
    })
}

/// What a tag is for a player.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Metadata,
    VideoConfig,
    AudioConfig,
    VideoKeyframe,
    Video,
    Audio,
    OtherScript,
}

pub fn classify(t: &TagRef<'_>) -> Class {
    classify_body(t.kind, t.data)
}

/// [`classify`] of a tag given as its type and body (an RTMP message, before it is a tag).
pub fn classify_body(kind: u8, d: &[u8]) -> Class {
    match kind {
        VIDEO => {
            let Some(&b0) = d.first() else {
                return Class::Video;
            };
            let frame_type = (b0 >> 4) & 0x07;
            let config = if b0 & 0x80 != 0 {
                // Enhanced RTMP: low nibble is the packet type, 0 = SequenceStart.
                b0 & 0x0f == 0
            } else {
                // AVC (7), legacy HEVC (12) and AV1 (13) ids: AVCPacketType 0 = sequence header.
                matches!(b0 & 0x0f, 7 | 12 | 13) && d.get(1) == Some(&0)
            };
            if config {
                Class::VideoConfig
            } else if frame_type == 1 {
                Class::VideoKeyframe
            } else {
                Class::Video
            }
        }
        AUDIO => {
            let Some(&b0) = d.first() else {
                return Class::Audio;
            };
            let config = match b0 >> 4 {
                10 => d.get(1) == Some(&0), // AAC sequence header
                9 => b0 & 0x0f == 0,        // enhanced audio: SequenceStart
                _ => false,
            };
            if config {
                Class::AudioConfig
            } else {
                Class::Audio
            }
        }
        _ => {
            if d.starts_with(b"\x02\x00\x0aonMetaData") {
                Class::Metadata
            } else {
                Class::OtherScript
            }
        }
    }
}

/// What a player needs before the first keyframe: the latest `onMetaData` and codec
/// configuration tags of a stream, and whether it has audio and video.
#[derive(Clone, Debug, Default)]
pub struct Head {
    pub metadata: Option<Bytes>,
    pub video_config: Option<Bytes>,
    pub audio_config: Option<Bytes>,
    pub has_audio: bool,
    pub has_video: bool,
    /// Chunks seen that are FLV tags, and that are not.
    pub tags: u64,
    pub others: u64,
    /// An MPEG-TS broadcast (pushed by ffmpeg through `firstmile push` or HTTP push): the origin
    /// of its decode times (90 kHz, the first PES timestamp of its first chunk), so every node
    /// that packages it for HLS computes the same timeline ([`hls::TsDemuxer::with_origin`]).
    pub ts_origin: Option<u64>,
    /// Its first chunks were looked at and are neither FLV nor MPEG-TS (a native stream of other
    /// bytes): not looked up again on every request.
    pub neither: bool,
    /// [`crate::hub::mono_ms`] before which an undecided head is not looked up again (a lookup
    /// reads the log or asks an upstream; viewers' requests must not repeat it at will).
    pub retry_at_ms: u64,
}

impl Head {
    /// Look at one chunk payload (cheap: a few header bytes); returns its class if it is a tag.
    pub fn observe(&mut self, payload: &Bytes) -> Option<Class> {
        let Some(t) = parse(payload) else {
            self.others += 1;
            return None;
        };
        self.tags += 1;
        let c = classify(&t);
        match c {
            Class::Metadata => self.metadata = Some(payload.clone()),
            Class::VideoConfig => {
                self.has_video = true;
                self.video_config = Some(payload.clone());
            }
            Class::AudioConfig => {
                self.has_audio = true;
                self.audio_config = Some(payload.clone());
            }
            Class::Video | Class::VideoKeyframe => self.has_video = true,
            Class::Audio => self.has_audio = true,
            Class::OtherScript => {}
        }
        Some(c)
    }

    /// A stream whose chunks are not FLV tags (a native-protocol stream).
    pub fn is_not_flv(&self) -> bool {
        self.others > 0 && self.tags == 0
    }

    /// Whether HLS can be made of it: FLV tags (RTMP), or MPEG-TS whose origin is known.
    pub fn packageable(&self) -> bool {
        !self.is_not_flv() || self.ts_origin.is_some()
    }

    /// What the first chunks held of a broadcast (from sequence 0, or the oldest a long
    /// broadcast's log still holds: its timeline then starts there) say about MPEG-TS: its
    /// origin if they carry a PES timestamp; and whether they are surely not MPEG-TS (no three
    /// sync bytes 188 apart anywhere in them, and enough of them read: `complete`, or 32 KiB).
    pub fn ts_of(first: &[crate::hub::Chunk], complete: bool) -> (Option<u64>, bool) {
        let mut d = hls::TsDemuxer::new();
        let mut read = 0;
        for c in first {
            read += c.payload.len();
            d.push(c.seq, &c.payload);
            if d.origin().is_some() {
                return (d.origin(), false);
            }
        }
        // The demuxer reads packets only once it has found sync.
        let synced = d.stats().packets > 0;
        (None, !synced && (complete || read >= 32 * 1024))
    }

    /// True when it holds nothing a player needs up front yet.
    pub fn is_empty(&self) -> bool {
        self.metadata.is_none() && self.video_config.is_none() && self.audio_config.is_none()
    }

    /// What an HTTP-FLV response starting mid-stream begins with: the file header, then the
    /// cached metadata and configuration tags.
    pub fn prefix(&self) -> Bytes {
        let mut b = BytesMut::new();
        b.put_slice(&header(
            self.has_audio || self.audio_config.is_some(),
            self.has_video || self.video_config.is_some() || (!self.has_audio),
        ));
        for t in [&self.metadata, &self.video_config, &self.audio_config]
            .into_iter()
            .flatten()
        {
            b.put_slice(t);
        }
        b.freeze()
    }

    /// The cached tags concatenated (what `/v1/streams/{id}/flv-head` serves to relays).
    pub fn tags_bytes(&self) -> Bytes {
        let mut b = BytesMut::new();
        for t in [&self.metadata, &self.video_config, &self.audio_config]
            .into_iter()
            .flatten()
        {
            b.put_slice(t);
        }
        b.freeze()
    }

    /// Fill what is missing here from back-to-back tags fetched from an upstream.
    pub fn fill_missing(&mut self, mut tags: &[u8]) {
        let mut other = Head::default();
        while tags.len() >= 15 {
            let len = u32::from_be_bytes([0, tags[1], tags[2], tags[3]]) as usize + 15;
            if len > tags.len() {
                break;
            }
            other.observe(&Bytes::copy_from_slice(&tags[..len]));
            tags = &tags[len..];
        }
        if self.metadata.is_none() {
            self.metadata = other.metadata;
        }
        if self.video_config.is_none() {
            self.has_video |= other.video_config.is_some();
            self.video_config = other.video_config;
        }
        if self.audio_config.is_none() {
            self.has_audio |= other.audio_config.is_some();
            self.audio_config = other.audio_config;
        }
    }
}

/// A value in a reconstructed `onMetaData`.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    Number(f64),
    Bool(bool),
    Text(String),
}

/// The data of an `onMetaData` script tag (AMF0: the string, then an ECMA array of `fields` in
/// the order given). Deterministic, so two servers fed the same publish store the same bytes.
pub fn on_metadata(fields: &[(&str, MetaValue)]) -> Vec<u8> {
    let mut b = Vec::with_capacity(64 + fields.len() * 24);
    b.extend_from_slice(b"\x02\x00\x0aonMetaData");
    b.push(0x08);
    b.extend_from_slice(&(fields.len() as u32).to_be_bytes());
    for (k, v) in fields {
        let k = &k.as_bytes()[..k.len().min(u16::MAX as usize)];
        b.extend_from_slice(&(k.len() as u16).to_be_bytes());
        b.extend_from_slice(k);
        match v {
            MetaValue::Number(n) => {
                b.push(0x00);
                b.extend_from_slice(&n.to_be_bytes());
            }
            MetaValue::Bool(x) => {
                b.push(0x01);
                b.push(u8::from(*x));
            }
            MetaValue::Text(s) => {
                let s = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
                b.push(0x02);
                b.extend_from_slice(&(s.len() as u16).to_be_bytes());
                b.extend_from_slice(s);
            }
        }
    }
    b.extend_from_slice(&[0, 0, 9]);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_round_trips_and_is_classified() {
        let t = tag(VIDEO, 0x0102_0304, &[0x17, 0, 0, 0, 0, 1, 2]);
        assert_eq!(t.len(), 7 + 15);
        let p = parse(&t).unwrap();
        assert_eq!((p.kind, p.ts_ms, p.data.len()), (VIDEO, 0x0102_0304, 7));
        assert_eq!(classify(&p), Class::VideoConfig);
        let k = tag(VIDEO, 40, &[0x17, 1, 0, 0, 0, 9]);
        assert_eq!(classify(&parse(&k).unwrap()), Class::VideoKeyframe);
        let i = tag(VIDEO, 80, &[0x27, 1, 0, 0, 0, 9]);
        assert_eq!(classify(&parse(&i).unwrap()), Class::Video);
        let a = tag(AUDIO, 0, &[0xaf, 0, 0x12, 0x10]);
        assert_eq!(classify(&parse(&a).unwrap()), Class::AudioConfig);
        let a = tag(AUDIO, 23, &[0xaf, 1, 0x55]);
        assert_eq!(classify(&parse(&a).unwrap()), Class::Audio);
        // Enhanced RTMP: HEVC by FourCC, SequenceStart and a keyframe.
        let e = tag(VIDEO, 0, &[0x90, b'h', b'v', b'c', b'1', 1]);
        assert_eq!(classify(&parse(&e).unwrap()), Class::VideoConfig);
        let e = tag(VIDEO, 0, &[0x91, b'h', b'v', b'c', b'1', 0, 0, 0, 1]);
        assert_eq!(classify(&parse(&e).unwrap()), Class::VideoKeyframe);
        let m = tag(
            SCRIPT,
            0,
            &on_metadata(&[("width", MetaValue::Number(320.0))]),
        );
        assert_eq!(classify(&parse(&m).unwrap()), Class::Metadata);
    }

    #[test]
    fn arbitrary_payloads_are_not_taken_for_tags() {
        assert!(parse(b"hello world, not a tag at all").is_none());
        let mut t = tag(AUDIO, 0, &[0xaf, 1, 2]).to_vec();
        t.push(0);
        assert!(parse(&t).is_none());
        let mut h = Head::default();
        h.observe(&Bytes::from_static(b"chunk-000001 payload"));
        assert!(h.is_not_flv());
    }

    #[test]
    fn the_head_keeps_the_latest_config_and_builds_the_prefix() {
        let mut h = Head::default();
        let m = tag(
            SCRIPT,
            0,
            &on_metadata(&[("encoder", MetaValue::Text("x".into()))]),
        );
        let v = tag(VIDEO, 0, &[0x17, 0, 0, 0, 0, 1]);
        let a = tag(AUDIO, 0, &[0xaf, 0, 0x12, 0x10]);
        for t in [&m, &v, &a] {
            h.observe(t);
        }
        let p = h.prefix();
        assert_eq!(&p[..5], b"FLV\x01\x05");
        assert_eq!(p.len(), 13 + m.len() + v.len() + a.len());
        let mut other = Head::default();
        other.fill_missing(&h.tags_bytes());
        assert_eq!(other.video_config, Some(v));
        assert_eq!(other.audio_config, Some(a));
        assert_eq!(other.metadata, Some(m));
    }
}
