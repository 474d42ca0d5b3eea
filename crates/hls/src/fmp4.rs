//! CMAF / fragmented MP4: the initialization segment and one fragment (`moof` + `mdat`) per part.
//!
//! Boxes are built with `mp4-atom` (encode and decode of every ISO-BMFF box, no interpretation),
//! so this module only decides *what* goes in them:
//!
//! - **init** (`ftyp` + `moov`): brands `iso6`/`cmfc`; `mvhd`/`tkhd` durations 0; one `trak` per
//!   track — video is track 1 (timescale 90 kHz; `avc1` + avcC, or `hvc1` + hvcC, the records
//!   as the encoder sent them), audio track 2 (timescale = the AAC sampling rate; `mp4a` + `esds`
//!   with the AudioSpecificConfig); empty sample tables; `mvex` with a `trex` per track.
//! - **fragment**: `moof` (`mfhd`, then per track with samples a `traf`: `tfhd` with
//!   default-base-is-moof, `tfdt` = the first sample's decode time, `trun` with data offset and
//!   per-sample duration, size, flags and signed composition offset) then one `mdat` holding the
//!   video samples followed by the audio samples. This is what RFC 8216bis §3.1.2 asks of an fMP4
//!   segment (a `tfdt` in every `traf`, movie-fragment-relative addressing) and what a CMAF chunk
//!   is.
//!
//! Deterministic: the same samples give the same bytes on every node.

use crate::codec::{AudioConfig, VideoCodec, VideoConfig};
use bytes::{BufMut, Bytes, BytesMut};

/// The video track's id and timescale.
pub const VIDEO_TRACK: u32 = 1;
pub const VIDEO_TIMESCALE: u32 = 90_000;
/// The audio track's id (its timescale is the sampling rate).
pub const AUDIO_TRACK: u32 = 2;

/// Sample flags (ISO/IEC 14496-12 8.8.3.1): a sync sample depends on no other; any other is a
/// non-sync sample depending on others.
const SYNC: u32 = 0x0200_0000;
const NON_SYNC: u32 = 0x0101_0000;

/// Why boxes could not be built (a configuration record the box encoder refused).
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    #[error("codec configuration not accepted: {0}")]
    Config(String),
    #[error("box encoding: {0}")]
    Encode(String),
}

fn enc(e: mp4_atom::Error) -> MuxError {
    MuxError::Encode(e.to_string())
}

/// The tracks of an init segment.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Tracks {
    pub video: Option<VideoConfig>,
    pub audio: Option<AudioConfig>,
}

/// `ftyp` + `moov` for these tracks.
pub fn init_segment(t: &Tracks) -> Result<Bytes, MuxError> {
    use mp4_atom::*;
    let ftyp = Ftyp {
        major_brand: b"iso6".into(),
        minor_version: 0,
        compatible_brands: vec![b"iso6".into(), b"cmfc".into(), b"mp41".into()],
    };
    let mut traks = Vec::new();
    let mut trex = Vec::new();
    if let Some(v) = &t.video {
        let mut rec = &v.record[..];
        let visual = Visual {
            data_reference_index: 1,
            width: v.width,
            height: v.height,
            ..Default::default()
        };
        let codec: Codec = match v.codec {
            VideoCodec::Avc => Avc1 {
                visual,
                avcc: Avcc::decode_body(&mut rec).map_err(|e| MuxError::Config(e.to_string()))?,
                btrt: None,
                colr: None,
                pasp: None,
                taic: None,
                fiel: None,
                spatial: None,
            }
            .into(),
            VideoCodec::Hevc => Hvc1 {
                visual,
                hvcc: Hvcc::decode_body(&mut rec).map_err(|e| MuxError::Config(e.to_string()))?,
                ..Default::default()
            }
            .into(),
        };
        traks.push(trak(
            VIDEO_TRACK,
            VIDEO_TIMESCALE,
            b"vide",
            codec,
            (v.width, v.height),
        ));
        trex.push(Trex {
            track_id: VIDEO_TRACK,
            default_sample_description_index: 1,
            default_sample_duration: 0,
            default_sample_size: 0,
            default_sample_flags: 0,
        });
    }
    if let Some(a) = &t.audio {
        let codec: Codec = Mp4a {
            audio: Audio {
                data_reference_index: 1,
                channel_count: a.channels,
                sample_size: 16,
                sample_rate: FixedPoint::new(u16::try_from(a.sample_rate).unwrap_or(0), 0),
            },
            esds: Esds {
                es_desc: esds::EsDescriptor {
                    es_id: AUDIO_TRACK as u16,
                    dec_config: esds::DecoderConfig {
                        object_type_indication: 0x40,
                        stream_type: 0x05,
                        up_stream: 0,
                        buffer_size_db: Default::default(),
                        max_bitrate: 0,
                        avg_bitrate: 0,
                        dec_specific: Some(esds::DecoderSpecific {
                            profile: a.object_type,
                            freq_index: a.freq_index,
                            chan_conf: a.channels as u8,
                            raw: a.asc.to_vec(),
                        }),
                    },
                    sl_config: esds::SLConfig::default(),
                    ..Default::default()
                },
            },
            btrt: None,
            taic: None,
        }
        .into();
        traks.push(trak(AUDIO_TRACK, a.sample_rate, b"soun", codec, (0, 0)));
        trex.push(Trex {
            track_id: AUDIO_TRACK,
            default_sample_description_index: 1,
            default_sample_duration: 0,
            default_sample_size: 0,
            default_sample_flags: 0,
        });
    }
    let moov = Moov {
        mvhd: Mvhd {
            timescale: 1000,
            next_track_id: AUDIO_TRACK + 1,
            rate: 1.into(),
            volume: 1.into(),
            ..Default::default()
        },
        mvex: Some(Mvex { mehd: None, trex }),
        trak: traks,
        ..Default::default()
    };
    let mut out = Vec::new();
    ftyp.encode(&mut out).map_err(enc)?;
    moov.encode(&mut out).map_err(enc)?;
    Ok(Bytes::from(out))
}

fn trak(
    id: u32,
    timescale: u32,
    handler: &[u8; 4],
    codec: mp4_atom::Codec,
    (w, h): (u16, u16),
) -> mp4_atom::Trak {
    use mp4_atom::*;
    let video = handler == b"vide";
    Trak {
        tkhd: Tkhd {
            track_id: id,
            enabled: true,
            in_movie: true,
            volume: if video { 0.into() } else { 1.into() },
            width: FixedPoint::new(w, 0),
            height: FixedPoint::new(h, 0),
            ..Default::default()
        },
        edts: None,
        meta: None,
        mdia: Mdia {
            mdhd: Mdhd {
                timescale,
                language: "und".into(),
                ..Default::default()
            },
            hdlr: Hdlr {
                handler: handler.into(),
                name: if video {
                    "firstmile video"
                } else {
                    "firstmile audio"
                }
                .into(),
            },
            minf: Minf {
                vmhd: video.then(Vmhd::default),
                smhd: (!video).then(Smhd::default),
                dinf: Dinf {
                    dref: Dref {
                        entries: vec![DrefEntry::Url(Url {
                            location: String::new(),
                        })],
                    },
                },
                stbl: Stbl {
                    stsd: Stsd {
                        codecs: vec![codec],
                    },
                    stco: Some(Stco::default()),
                    ..Default::default()
                },
                ..Default::default()
            },
        },
        senc: None,
        tref: None,
        udta: None,
    }
}

/// One sample of a fragment, in its track's timescale.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub duration: u32,
    pub cts: i32,
    pub key: bool,
    pub data: Bytes,
}

/// The samples of one track in a fragment: decode time of the first, then the samples.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    pub track: u32,
    pub base_decode_time: u64,
    pub samples: Vec<Sample>,
}

/// One `moof` + `mdat` with the given runs (empty runs are left out).
pub fn fragment(sequence: u32, runs: &[Run]) -> Result<Bytes, MuxError> {
    use mp4_atom::*;
    let runs: Vec<&Run> = runs.iter().filter(|r| !r.samples.is_empty()).collect();
    let build = |offsets: &[i32]| Moof {
        mfhd: Mfhd {
            sequence_number: sequence,
        },
        traf: runs
            .iter()
            .zip(offsets)
            .map(|(r, &off)| Traf {
                tfhd: Tfhd {
                    track_id: r.track,
                    default_base_is_moof: true,
                    ..Default::default()
                },
                tfdt: Some(Tfdt {
                    base_media_decode_time: r.base_decode_time,
                }),
                trun: vec![Trun {
                    data_offset: Some(off),
                    samples: TrunSamples::Explicit(
                        r.samples
                            .iter()
                            .map(|s| TrunEntry {
                                duration: Some(s.duration),
                                size: Some(s.data.len() as u32),
                                flags: Some(if s.key { SYNC } else { NON_SYNC }),
                                cts: Some(i64::from(s.cts)),
                            })
                            .collect(),
                    ),
                }],
                ..Default::default()
            })
            .collect(),
    };
    // The offsets do not change the size of the moof: size it once, then fill them in.
    let mut probe = Vec::new();
    build(&vec![0; runs.len()])
        .encode(&mut probe)
        .map_err(enc)?;
    let mut offsets = Vec::with_capacity(runs.len());
    let mut at = probe.len() + 8;
    for r in &runs {
        offsets
            .push(i32::try_from(at).map_err(|_| MuxError::Encode("fragment over 2 GiB".into()))?);
        at += r.samples.iter().map(|s| s.data.len()).sum::<usize>();
    }
    let mdat_len = at - probe.len();
    let mut out = BytesMut::with_capacity(at);
    let mut moof = Vec::with_capacity(probe.len());
    build(&offsets).encode(&mut moof).map_err(enc)?;
    out.put_slice(&moof);
    out.put_u32(u32::try_from(mdat_len).map_err(|_| MuxError::Encode("mdat over 4 GiB".into()))?);
    out.put_slice(b"mdat");
    for r in &runs {
        for s in &r.samples {
            out.put_slice(&s.data);
        }
    }
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{audio_config, config, tests::avcc};
    use mp4_atom::{Any, Decode};

    fn tracks() -> Tracks {
        Tracks {
            video: Some(config(VideoCodec::Avc, avcc()).unwrap()),
            audio: Some(audio_config(Bytes::from_static(&[0x12, 0x10])).unwrap()),
        }
    }

    #[test]
    fn the_init_segment_decodes_back_with_both_tracks() {
        let init = init_segment(&tracks()).unwrap();
        let mut buf = &init[..];
        let ftyp = mp4_atom::Ftyp::decode(&mut buf).unwrap();
        assert_eq!(ftyp.major_brand, b"iso6".into());
        let moov = mp4_atom::Moov::decode(&mut buf).unwrap();
        assert!(buf.is_empty());
        assert_eq!(moov.trak.len(), 2);
        assert_eq!(moov.trak[0].mdia.mdhd.timescale, VIDEO_TIMESCALE);
        assert_eq!(moov.trak[1].mdia.mdhd.timescale, 44100);
        assert_eq!(moov.mvex.unwrap().trex.len(), 2);
        let v = moov.trak[0].mdia.minf.stbl.stsd.codecs[0].visual().unwrap();
        assert_eq!((v.width, v.height), (320, 240));
    }

    #[test]
    fn a_fragment_points_its_runs_at_the_right_bytes() {
        let v = Run {
            track: VIDEO_TRACK,
            base_decode_time: 90_000,
            samples: vec![
                Sample {
                    duration: 3600,
                    cts: 0,
                    key: true,
                    data: Bytes::from_static(b"KEYFRAME"),
                },
                Sample {
                    duration: 3600,
                    cts: -3600,
                    key: false,
                    data: Bytes::from_static(b"P"),
                },
            ],
        };
        let a = Run {
            track: AUDIO_TRACK,
            base_decode_time: 44100,
            samples: vec![Sample {
                duration: 1024,
                cts: 0,
                key: true,
                data: Bytes::from_static(b"AAC"),
            }],
        };
        let f = fragment(7, &[v, a]).unwrap();
        let mut buf = &f[..];
        let moof = match Any::decode(&mut buf).unwrap() {
            Any::Moof(m) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(moof.mfhd.sequence_number, 7);
        assert_eq!(&buf[4..8], b"mdat");
        let t0 = &moof.traf[0];
        assert_eq!(t0.tfdt.as_ref().unwrap().base_media_decode_time, 90_000);
        let off = t0.trun[0].data_offset.unwrap() as usize;
        assert_eq!(&f[off..off + 9], b"KEYFRAMEP");
        let e: Vec<_> = t0.trun[0].samples.iter().collect();
        assert_eq!((e[1].cts, e[1].flags), (Some(-3600), Some(NON_SYNC)));
        let off = moof.traf[1].trun[0].data_offset.unwrap() as usize;
        assert_eq!(&f[off..], b"AAC");
        // An empty run is left out.
        let only = fragment(
            1,
            &[Run {
                track: AUDIO_TRACK,
                base_decode_time: 0,
                samples: vec![],
            }],
        )
        .unwrap();
        assert_eq!(&only[4..8], b"moof");
    }
}
