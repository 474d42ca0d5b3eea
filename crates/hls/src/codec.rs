//! FLV tag bodies → codec configurations and frames.
//!
//! An RTMP-ingested stream is stored as one FLV tag per chunk (see the entry server's `flv`
//! module); this module reads the *body* of such a tag (the RTMP message) given its tag type and
//! the chunk's pts (the decode time, µs). It understands:
//!
//! | tag | body | result |
//! |---|---|---|
//! | video, legacy AVC (codec id 7) or HEVC (12) | `frametype|codec, packettype, cts(SI24 ms), data` | packet 0: [`VideoConfig`] (avcC / hvcC record); 1: a [`Frame`] (length-prefixed NAL units) |
//! | video, enhanced RTMP (`IsExHeader`), FourCC `avc1` / `hvc1` | `1|frametype|packettype, fourcc, [cts], data` | SequenceStart: config; CodedFrames (with cts) / CodedFramesX (cts 0): a frame |
//! | audio, AAC (sound format 10) | `0xAx, packettype, data` | 0: [`AudioConfig`] (AudioSpecificConfig); 1: a frame (raw AAC) |
//! | anything else (metadata, other codecs, end-of-sequence) | | [`Tag::Other`] |
//!
//! Every length and field is checked: a hostile or truncated body is an error, never a panic.
//! What this is not: a decoder. Picture size comes from the SPS (only as far as needed: the
//! sample entry's width and height); nothing else of the bitstream is looked at.

use bytes::Bytes;

/// FLV tag types.
pub const AUDIO: u8 = 8;
pub const VIDEO: u8 = 9;

/// Why a tag body cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("{what}: body too short ({len} bytes)")]
    Short { what: &'static str, len: usize },
    #[error("bad codec configuration: {0}")]
    BadConfig(String),
}

/// The video codecs packaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VideoCodec {
    /// H.264: `avc1` sample entry with the avcC record.
    Avc,
    /// H.265: `hvc1` sample entry with the hvcC record.
    Hevc,
}

/// A video track's configuration: the decoder configuration record as carried by FLV.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VideoConfig {
    pub codec: VideoCodec,
    /// AVCDecoderConfigurationRecord or HEVCDecoderConfigurationRecord.
    pub record: Bytes,
    pub width: u16,
    pub height: u16,
}

/// An AAC track's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AudioConfig {
    /// The AudioSpecificConfig.
    pub asc: Bytes,
    /// Audio object type (2 = AAC-LC, 5 = HE-AAC ...).
    pub object_type: u8,
    /// Sampling frequency index of the ASC (0..=12), 15 when explicit.
    pub freq_index: u8,
    /// Sampling rate (Hz): the track's timescale.
    pub sample_rate: u32,
    pub channels: u16,
}

/// Which track a frame belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Track {
    Video,
    Audio,
}

/// One coded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub track: Track,
    /// Decode time, µs (the chunk's pts).
    pub dts_us: i64,
    /// Composition offset, µs (video with B-frames; 0 otherwise).
    pub cts_us: i64,
    /// A sync sample (video keyframe; every audio frame).
    pub key: bool,
    /// The sample as it goes into `mdat` (AVCC/HVCC NAL units, or a raw AAC frame).
    pub data: Bytes,
}

/// What a tag body is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tag {
    Frame(Frame),
    Video(VideoConfig),
    Audio(AudioConfig),
    /// Metadata, an unsupported codec, end of sequence: nothing to package.
    Other,
}

fn short(what: &'static str, len: usize) -> CodecError {
    CodecError::Short { what, len }
}

fn si24(b: &[u8]) -> i64 {
    let v = (i32::from(b[0]) << 16) | (i32::from(b[1]) << 8) | i32::from(b[2]);
    i64::from((v << 8) >> 8)
}

/// Read a tag body of type `kind` (8 audio, 9 video) whose chunk pts is `pts_us`.
pub fn parse_tag(kind: u8, body: &Bytes, pts_us: i64) -> Result<Tag, CodecError> {
    match kind {
        VIDEO => parse_video(body, pts_us),
        AUDIO => parse_audio(body, pts_us),
        _ => Ok(Tag::Other),
    }
}

fn parse_video(b: &Bytes, pts_us: i64) -> Result<Tag, CodecError> {
    let Some(&b0) = b.first() else {
        return Err(short("video tag", 0));
    };
    let frame_type = (b0 >> 4) & 0x07;
    if frame_type == 5 {
        return Ok(Tag::Other); // video info / command frame
    }
    let key = frame_type == 1;
    if b0 & 0x80 != 0 {
        // Enhanced RTMP: low nibble = packet type, then the FourCC.
        if b.len() < 5 {
            return Err(short("enhanced video tag", b.len()));
        }
        let codec = match &b[1..5] {
            b"avc1" => VideoCodec::Avc,
            b"hvc1" => VideoCodec::Hevc,
            _ => return Ok(Tag::Other),
        };
        return match b0 & 0x0f {
            0 => config(codec, b.slice(5..)).map(Tag::Video),
            1 => {
                if b.len() < 8 {
                    return Err(short("enhanced coded frame", b.len()));
                }
                Ok(frame(
                    Track::Video,
                    pts_us,
                    si24(&b[5..8]),
                    key,
                    b.slice(8..),
                ))
            }
            3 => Ok(frame(Track::Video, pts_us, 0, key, b.slice(5..))),
            _ => Ok(Tag::Other),
        };
    }
    let codec = match b0 & 0x0f {
        7 => VideoCodec::Avc,
        12 => VideoCodec::Hevc,
        _ => return Ok(Tag::Other),
    };
    if b.len() < 5 {
        return Err(short("AVC video tag", b.len()));
    }
    match b[1] {
        0 => config(codec, b.slice(5..)).map(Tag::Video),
        1 => Ok(frame(
            Track::Video,
            pts_us,
            si24(&b[2..5]),
            key,
            b.slice(5..),
        )),
        _ => Ok(Tag::Other),
    }
}

fn frame(track: Track, dts_us: i64, cts_ms: i64, key: bool, data: Bytes) -> Tag {
    if data.is_empty() {
        return Tag::Other;
    }
    Tag::Frame(Frame {
        track,
        dts_us,
        cts_us: cts_ms * 1000,
        key,
        data,
    })
}

fn parse_audio(b: &Bytes, pts_us: i64) -> Result<Tag, CodecError> {
    let Some(&b0) = b.first() else {
        return Err(short("audio tag", 0));
    };
    if b0 >> 4 != 10 {
        return Ok(Tag::Other);
    }
    if b.len() < 2 {
        return Err(short("AAC audio tag", b.len()));
    }
    match b[1] {
        0 => audio_config(b.slice(2..)).map(Tag::Audio),
        1 => Ok(frame(Track::Audio, pts_us, 0, true, b.slice(2..))),
        _ => Ok(Tag::Other),
    }
}

const AAC_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

/// Parse an AudioSpecificConfig (ISO/IEC 14496-3 1.6.2.1), as far as the sample entry needs.
pub fn audio_config(asc: Bytes) -> Result<AudioConfig, CodecError> {
    let mut r = Bits::new(&asc);
    let bad = |m: &str| CodecError::BadConfig(format!("AudioSpecificConfig: {m}"));
    let mut object_type = r.read(5).ok_or_else(|| bad("truncated"))? as u8;
    if object_type == 31 {
        object_type = 32 + r.read(6).ok_or_else(|| bad("truncated"))? as u8;
    }
    let freq_index = r.read(4).ok_or_else(|| bad("truncated"))? as u8;
    let sample_rate = if freq_index == 15 {
        r.read(24).ok_or_else(|| bad("truncated"))? as u32
    } else {
        *AAC_RATES
            .get(usize::from(freq_index))
            .ok_or_else(|| bad("reserved sampling frequency index"))?
    };
    let channels = r.read(4).ok_or_else(|| bad("truncated"))? as u16;
    if sample_rate == 0 {
        return Err(bad("sampling rate 0"));
    }
    Ok(AudioConfig {
        asc,
        object_type,
        freq_index,
        sample_rate,
        channels: channels.max(1),
    })
}

/// Check a decoder configuration record and find the picture size in its SPS.
pub fn config(codec: VideoCodec, record: Bytes) -> Result<VideoConfig, CodecError> {
    let (width, height) = match codec {
        VideoCodec::Avc => avc_size(&record)?,
        VideoCodec::Hevc => hevc_size(&record)?,
    };
    Ok(VideoConfig {
        codec,
        record,
        width,
        height,
    })
}

/// An Annex B sample (NAL units after 00 00 01 / 00 00 00 01 start codes) as AVCC (4-byte
/// lengths); None when `sample` does not start with a start code. ffmpeg's FLV muxer passes
/// libx264's output through as Annex B when it had no global header (the `tee` muxer).
pub fn annex_b_to_avcc(sample: &[u8]) -> Option<Bytes> {
    if !(sample.starts_with(&[0, 0, 1]) || sample.starts_with(&[0, 0, 0, 1])) {
        return None;
    }
    let mut out = Vec::with_capacity(sample.len() + 16);
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= sample.len() {
        if sample[i] == 0 && sample[i + 1] == 0 && sample[i + 2] == 1 {
            starts.push((i, i + 3));
            i += 3;
        } else {
            i += 1;
        }
    }
    for (k, &(_, begin)) in starts.iter().enumerate() {
        let mut end = starts.get(k + 1).map_or(sample.len(), |&(sc, _)| sc);
        // A four-byte start code's leading zero, and trailing zeros, belong to no NAL unit.
        while end > begin && sample[end - 1] == 0 {
            end -= 1;
        }
        let nal = &sample[begin..end];
        if nal.is_empty() {
            continue;
        }
        out.extend_from_slice(&u32::try_from(nal.len()).ok()?.to_be_bytes());
        out.extend_from_slice(nal);
    }
    Some(Bytes::from(out))
}

/// An H.264 configuration from a keyframe's own SPS and PPS (4-byte length-prefixed NAL units),
/// for publishers whose sequence header is empty and who send them in-band (ffmpeg's `tee`
/// muxer with libx264 does: `17 00 000000`, then SPS and PPS in every keyframe).
pub fn avc_config_in_band(sample: &[u8]) -> Option<VideoConfig> {
    let (mut sps, mut pps) = (None, None);
    let mut rest = sample;
    while rest.len() >= 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let nal = rest.get(4..4 + len)?;
        match nal.first().map(|b| b & 0x1f) {
            Some(7) if sps.is_none() => sps = Some(nal),
            Some(8) if pps.is_none() => pps = Some(nal),
            _ => {}
        }
        rest = &rest[4 + len..];
    }
    let (sps, pps) = (sps?, pps?);
    if sps.len() < 4 || sps.len() > 0xffff || pps.len() > 0xffff {
        return None;
    }
    let mut r = vec![1, sps[1], sps[2], sps[3], 0xff, 0xe1];
    r.extend_from_slice(&(sps.len() as u16).to_be_bytes());
    r.extend_from_slice(sps);
    r.push(1);
    r.extend_from_slice(&(pps.len() as u16).to_be_bytes());
    r.extend_from_slice(pps);
    config(VideoCodec::Avc, Bytes::from(r)).ok()
}

fn cfg_err(m: impl Into<String>) -> CodecError {
    CodecError::BadConfig(m.into())
}

fn avc_size(r: &[u8]) -> Result<(u16, u16), CodecError> {
    if r.len() < 8 || r[0] != 1 {
        return Err(cfg_err("avcC: not a version 1 record"));
    }
    if r[5] & 0x1f == 0 {
        return Err(cfg_err("avcC: no SPS"));
    }
    let len = usize::from(u16::from_be_bytes([r[6], r[7]]));
    let sps = r
        .get(8..8 + len)
        .ok_or_else(|| cfg_err("avcC: SPS runs past the record"))?;
    h264_sps_size(sps).ok_or_else(|| cfg_err("avcC: SPS unreadable"))
}

/// Remove emulation-prevention bytes (00 00 03 → 00 00) from a NAL unit.
fn rbsp(nal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in nal {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// Width and height from an H.264 SPS NAL unit (with its 1-byte header).
pub fn h264_sps_size(nal: &[u8]) -> Option<(u16, u16)> {
    let data = rbsp(nal.get(1..)?);
    let mut r = Bits::new(&data);
    let profile = r.read(8)?;
    r.read(16)?; // constraint flags, level
    r.ue()?; // sps id
    let mut chroma_format = 1;
    if matches!(
        profile,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma_format = r.ue()?;
        if chroma_format == 3 {
            r.read(1)?;
        }
        r.ue()?;
        r.ue()?;
        r.read(1)?;
        if r.read(1)? == 1 {
            let lists = if chroma_format == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.read(1)? == 1 {
                    let size = if i < 6 { 16 } else { 64 };
                    let (mut last, mut next) = (8i64, 8i64);
                    for _ in 0..size {
                        if next != 0 {
                            next = (last + r.se()? + 256) % 256;
                        }
                        if next != 0 {
                            last = next;
                        }
                    }
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num
    match r.ue()? {
        0 => {
            r.ue()?;
        }
        1 => {
            r.read(1)?;
            r.se()?;
            r.se()?;
            for _ in 0..r.ue()?.min(256) {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.read(1)?;
    let w_mbs = r.ue()? + 1;
    let h_units = r.ue()? + 1;
    let frame_mbs_only = r.read(1)?;
    if frame_mbs_only == 0 {
        r.read(1)?;
    }
    r.read(1)?;
    let (mut cl, mut cr, mut ct, mut cb) = (0, 0, 0, 0);
    if r.read(1)? == 1 {
        cl = r.ue()?;
        cr = r.ue()?;
        ct = r.ue()?;
        cb = r.ue()?;
    }
    let (sub_w, sub_h) = match chroma_format {
        0 | 3 => (1, 1),
        1 => (2, 2),
        _ => (2, 1),
    };
    let crop_x = if chroma_format == 0 { 1 } else { sub_w };
    let crop_y = (if chroma_format == 0 { 1 } else { sub_h }) * (2 - frame_mbs_only);
    let w = (w_mbs * 16).checked_sub((cl + cr) * crop_x)?;
    let h = (h_units * 16 * (2 - frame_mbs_only)).checked_sub((ct + cb) * crop_y)?;
    Some((u16::try_from(w).ok()?, u16::try_from(h).ok()?))
}

fn hevc_size(r: &[u8]) -> Result<(u16, u16), CodecError> {
    if r.len() < 23 || r[0] != 1 {
        return Err(cfg_err("hvcC: not a version 1 record"));
    }
    let arrays = r[22];
    let mut pos = 23;
    for _ in 0..arrays {
        let hdr = r
            .get(pos..pos + 3)
            .ok_or_else(|| cfg_err("hvcC truncated"))?;
        let nal_type = hdr[0] & 0x3f;
        let count = u16::from_be_bytes([hdr[1], hdr[2]]);
        pos += 3;
        for _ in 0..count {
            let l = r
                .get(pos..pos + 2)
                .ok_or_else(|| cfg_err("hvcC truncated"))?;
            let len = usize::from(u16::from_be_bytes([l[0], l[1]]));
            let nal = r
                .get(pos + 2..pos + 2 + len)
                .ok_or_else(|| cfg_err("hvcC: NAL unit runs past the record"))?;
            if nal_type == 33 {
                return hevc_sps_size(nal).ok_or_else(|| cfg_err("hvcC: SPS unreadable"));
            }
            pos += 2 + len;
        }
    }
    Err(cfg_err("hvcC: no SPS"))
}

/// Width and height from an H.265 SPS NAL unit (with its 2-byte header).
pub fn hevc_sps_size(nal: &[u8]) -> Option<(u16, u16)> {
    let data = rbsp(nal.get(2..)?);
    let mut r = Bits::new(&data);
    r.read(4)?; // vps id
    let max_sub_layers = r.read(3)? as usize;
    r.read(1)?;
    // profile_tier_level(1, max_sub_layers_minus1)
    r.read(8)?;
    r.read(32)?;
    r.read(32)?;
    r.read(16)?;
    r.read(8)?; // general_level_idc
    let mut sub_profile = [false; 8];
    let mut sub_level = [false; 8];
    for i in 0..max_sub_layers {
        sub_profile[i] = r.read(1)? == 1;
        sub_level[i] = r.read(1)? == 1;
    }
    if max_sub_layers > 0 {
        for _ in max_sub_layers..8 {
            r.read(2)?;
        }
    }
    for i in 0..max_sub_layers {
        if sub_profile[i] {
            r.read(32)?;
            r.read(32)?;
            r.read(24)?;
        }
        if sub_level[i] {
            r.read(8)?;
        }
    }
    r.ue()?; // sps id
    let chroma = r.ue()?;
    if chroma == 3 {
        r.read(1)?;
    }
    let w = r.ue()?;
    let h = r.ue()?;
    let (mut cl, mut cr, mut ct, mut cb) = (0, 0, 0, 0);
    if r.read(1)? == 1 {
        cl = r.ue()?;
        cr = r.ue()?;
        ct = r.ue()?;
        cb = r.ue()?;
    }
    let (sw, sh) = match chroma {
        1 => (2, 2),
        2 => (2, 1),
        _ => (1, 1),
    };
    let w = w.checked_sub((cl + cr) * sw)?;
    let h = h.checked_sub((ct + cb) * sh)?;
    Some((u16::try_from(w).ok()?, u16::try_from(h).ok()?))
}

/// An MSB-first bit reader with Exp-Golomb codes; `None` past the end.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    fn read(&mut self, n: u32) -> Option<u64> {
        let mut v = 0u64;
        for _ in 0..n {
            let byte = *self.data.get(self.pos / 8)?;
            let bit = (byte >> (7 - (self.pos % 8))) & 1;
            v = (v << 1) | u64::from(bit);
            self.pos += 1;
        }
        Some(v)
    }

    fn ue(&mut self) -> Option<u64> {
        let mut zeros = 0;
        while self.read(1)? == 0 {
            zeros += 1;
            if zeros > 32 {
                return None;
            }
        }
        Some((1u64 << zeros) - 1 + self.read(zeros)?)
    }

    fn se(&mut self) -> Option<i64> {
        let k = self.ue()? as i64;
        Some(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The SPS and PPS x264 (`-preset ultrafast`) writes for 320x240.
    pub const SPS_320X240: &[u8] = &[
        0x67, 0x42, 0xc0, 0x0d, 0xda, 0x05, 0x07, 0xec, 0x04, 0x40, 0x00, 0x00, 0x03, 0x00, 0x40,
        0x00, 0x00, 0x0c, 0x83, 0xc5, 0x0a, 0xa8,
    ];
    pub const PPS: &[u8] = &[0x68, 0xce, 0x0f, 0xc8];
    /// The SPS x265 writes for 320x240.
    const HEVC_SPS_320X240: &[u8] = &[
        0x42, 0x01, 0x01, 0x01, 0x60, 0x00, 0x00, 0x03, 0x00, 0x90, 0x00, 0x00, 0x03, 0x00, 0x00,
        0x03, 0x00, 0x3c, 0xa0, 0x0a, 0x08, 0x0f, 0x16, 0x59, 0x59, 0xa4, 0x93, 0x2b, 0xc0, 0x5a,
        0x02, 0x00, 0x00, 0x03, 0x00, 0x02, 0x00, 0x00, 0x03, 0x00, 0x32, 0x10,
    ];

    pub fn avcc() -> Bytes {
        let mut r = vec![1, 0x42, 0xc0, 0x0d, 0xff, 0xe1];
        r.extend((SPS_320X240.len() as u16).to_be_bytes());
        r.extend(SPS_320X240);
        r.push(1);
        r.extend((PPS.len() as u16).to_be_bytes());
        r.extend(PPS);
        Bytes::from(r)
    }

    #[test]
    fn the_sps_gives_the_picture_size() {
        assert_eq!(h264_sps_size(SPS_320X240), Some((320, 240)));
        assert_eq!(hevc_sps_size(HEVC_SPS_320X240), Some((320, 240)));
        let c = config(VideoCodec::Avc, avcc()).unwrap();
        assert_eq!((c.width, c.height), (320, 240));
        // Truncated records are errors, never panics.
        for n in 0..avcc().len() {
            let _ = config(VideoCodec::Avc, avcc().slice(..n));
        }
        assert!(config(VideoCodec::Avc, Bytes::from_static(&[1, 2, 3])).is_err());
    }

    #[test]
    fn tags_are_read_as_configs_and_frames() {
        let mut cfg = vec![0x17, 0, 0, 0, 0];
        cfg.extend_from_slice(&avcc());
        let t = parse_tag(VIDEO, &Bytes::from(cfg), 0).unwrap();
        assert!(matches!(t, Tag::Video(ref c) if c.width == 320), "{t:?}");
        // A keyframe with a composition offset of 80 ms.
        let k = Bytes::from_static(&[0x17, 1, 0, 0, 80, 0, 0, 0, 2, 0x65, 0x88]);
        let Tag::Frame(f) = parse_tag(VIDEO, &k, 40_000).unwrap() else {
            panic!()
        };
        assert_eq!(
            (f.key, f.dts_us, f.cts_us, f.data.len()),
            (true, 40_000, 80_000, 6)
        );
        // A negative composition offset (SI24).
        let p = Bytes::from_static(&[0x27, 1, 0xff, 0xff, 0xd8, 0, 0, 0, 1, 0x41]);
        let Tag::Frame(f) = parse_tag(VIDEO, &p, 0).unwrap() else {
            panic!()
        };
        assert_eq!((f.key, f.cts_us), (false, -40_000));
        // AAC: AudioSpecificConfig 0x12 0x10 = LC, 44.1 kHz, stereo; then a raw frame.
        let Tag::Audio(a) =
            parse_tag(AUDIO, &Bytes::from_static(&[0xaf, 0, 0x12, 0x10]), 0).unwrap()
        else {
            panic!()
        };
        assert_eq!((a.object_type, a.sample_rate, a.channels), (2, 44100, 2));
        let Tag::Frame(f) =
            parse_tag(AUDIO, &Bytes::from_static(&[0xaf, 1, 0x21, 0x1b]), 23_000).unwrap()
        else {
            panic!()
        };
        assert_eq!((f.track, f.key, f.data.len()), (Track::Audio, true, 2));
        // Enhanced RTMP HEVC CodedFramesX, an unknown FourCC, MP3, truncated bodies.
        let x = Bytes::from_static(&[0x93, b'h', b'v', b'c', b'1', 0, 0, 0, 1, 0x26]);
        assert!(matches!(parse_tag(VIDEO, &x, 0).unwrap(), Tag::Frame(f) if f.key));
        let av1 = Bytes::from_static(&[0x91, b'a', b'v', b'0', b'1', 0, 0, 0, 9]);
        assert_eq!(parse_tag(VIDEO, &av1, 0).unwrap(), Tag::Other);
        assert_eq!(
            parse_tag(AUDIO, &Bytes::from_static(&[0x2f, 1, 2]), 0).unwrap(),
            Tag::Other
        );
        for body in [&[][..], &[0x17, 1], &[0x90, b'h'], &[0xaf]] {
            assert!(parse_tag(VIDEO, &Bytes::copy_from_slice(body), 0).is_err() || body[0] == 0xaf);
        }
        assert!(parse_tag(AUDIO, &Bytes::from_static(&[0xaf]), 0).is_err());
    }
}
