//! The packaging rules on made-up streams: where segments and parts start, numbering that does
//! not depend on where a node started, gaps, blocking reloads, playlists.

use crate::codec::{AUDIO, VIDEO, tests::avcc};
use crate::packager::{Config, Lookup, Packager, Reload};
use crate::playlist::{Flavor, Resource, iso8601, parse_resource, render};
use bytes::Bytes;

/// One FLV-tag chunk: (seq, pts µs, tag type, body).
type Chunk = (u64, i64, u8, Bytes);

/// A 25 fps video stream with a keyframe every `gop` frames and AAC at 44.1 kHz, from t = 0,
/// `secs` long; configuration tags first, as an RTMP publish stores them.
fn stream(secs: i64, gop: u64) -> Vec<Chunk> {
    let mut v = Vec::new();
    let mut cfg = vec![0x17, 0, 0, 0, 0];
    cfg.extend_from_slice(&avcc());
    v.push((0i64, VIDEO, Bytes::from(cfg)));
    v.push((0, AUDIO, Bytes::from_static(&[0xaf, 0, 0x12, 0x10])));
    let mut media = Vec::new();
    for i in 0..(secs * 25) as u64 {
        let key = i % gop == 0;
        let mut b = vec![if key { 0x17 } else { 0x27 }, 1, 0, 0, 0];
        b.extend_from_slice(&(4u32).to_be_bytes());
        b.extend_from_slice(&(i as u32).to_be_bytes());
        media.push((i as i64 * 40_000, 0u8, VIDEO, Bytes::from(b)));
    }
    for k in 0..(secs * 44_100 / 1024) {
        // AAC frames: 1024 samples; timestamps in whole ms, as FLV carries them.
        let ms = k * 1024 * 1000 / 44_100;
        let mut b = vec![0xaf, 1];
        b.extend_from_slice(&(k as u32).to_be_bytes());
        media.push((ms * 1000, 1u8, AUDIO, Bytes::from(b)));
    }
    media.sort_by_key(|m| (m.0, m.1));
    v.extend(media.into_iter().map(|(t, _, k, b)| (t, k, b)));
    v.into_iter()
        .enumerate()
        .map(|(i, (t, k, b))| (i as u64, t, k, b))
        .collect()
}

fn feed(p: &mut Packager, chunks: &[Chunk]) {
    for (seq, pts, kind, body) in chunks {
        p.push_tag(*seq, *pts, *kind, body);
    }
}

fn cfg() -> Config {
    Config {
        segment_ms: 2000,
        part_ms: 500,
        window: 6,
    }
}

#[test]
fn segments_start_on_keyframes_numbered_by_window_and_parts_fit_the_target() {
    let mut p = Packager::new(cfg(), (0, 1_700_000_000_000));
    feed(&mut p, &stream(10, 25));
    p.finish();
    let segs: Vec<_> = p.segments().iter().collect();
    let msns: Vec<u64> = segs.iter().map(|s| s.msn).collect();
    assert_eq!(msns, vec![0, 1, 2, 3, 4]);
    for s in &segs {
        assert_eq!(
            s.start_us,
            s.msn as i64 * 2_000_000,
            "starts at its window's keyframe"
        );
        assert!(s.independent);
        assert_eq!(s.duration_us, 2_000_000);
        assert_eq!(
            s.parts.iter().map(|p| p.duration_us).sum::<i64>(),
            s.duration_us
        );
        let n = s.parts.len();
        for (i, part) in s.parts.iter().enumerate() {
            assert!(part.duration_us <= 500_000, "{part:?}");
            if i + 1 < n && !part.independent {
                assert!(part.duration_us >= 425_000, "85 % of PT: {part:?}");
            }
        }
        assert!(s.parts[0].independent);
        // The segment is its parts back to back.
        let cat: Vec<u8> = s.parts.iter().flat_map(|p| p.bytes.to_vec()).collect();
        assert_eq!(&cat[..], &s.bytes[..]);
    }
    assert_eq!(segs[1].pdt_ms, 1_700_000_002_000);
    assert_eq!(p.dropped, 0, "every frame went into a part");
}

#[test]
fn a_node_that_starts_later_numbers_and_muxes_the_same_segments() {
    let chunks = stream(12, 25);
    let mut a = Packager::new(cfg(), (0, 0));
    feed(&mut a, &chunks);
    // Another node starts mid-stream (a relay, a late first viewer), with the configuration
    // from the stream's cached head.
    let mut b = Packager::new(cfg(), (0, 0));
    b.push_config_tag(chunks[0].2, &chunks[0].3);
    b.push_config_tag(chunks[1].2, &chunks[1].3);
    let mid = chunks.iter().position(|c| c.1 >= 3_300_000).unwrap();
    feed(&mut b, &chunks[mid..]);
    let first_b = b.segments().front().unwrap().msn;
    assert_eq!(first_b, 2, "the first window b saw from its start");
    for s in b.segments() {
        let same = a.segments().iter().find(|x| x.msn == s.msn).unwrap();
        assert_eq!(
            same.bytes, s.bytes,
            "segment {} differs between nodes",
            s.msn
        );
        assert_eq!(same.parts.len(), s.parts.len());
    }
    let (oa, ob) = (a.open().unwrap(), b.open().unwrap());
    assert_eq!((oa.msn, oa.parts.len()), (ob.msn, ob.parts.len()));
    assert_eq!(a.part(oa.msn, 0), b.part(ob.msn, 0));
}

#[test]
fn long_gops_keep_the_numbering_gap_free_and_segments_short() {
    // A keyframe every 4 s, windows of 2 s.
    let mut p = Packager::new(cfg(), (0, 0));
    feed(&mut p, &stream(13, 100));
    p.finish();
    let msns: Vec<u64> = p.segments().iter().map(|s| s.msn).collect();
    assert_eq!(msns, (0..=6).collect::<Vec<_>>());
    for s in p.segments() {
        assert!(
            s.duration_us < 4_000_000,
            "{} lasts {}",
            s.msn,
            s.duration_us
        );
        assert_eq!(s.independent, s.msn % 2 == 0, "segment {}", s.msn);
        assert!(!s.gap);
    }
    assert_eq!(
        p.segments()[1].start_us,
        3_960_000,
        "the last frame of window 1"
    );
}

#[test]
fn a_clock_jump_is_listed_as_gap_segments() {
    let mut chunks = stream(10, 25);
    // Everything from 5 s on comes 6 s later (a publisher that paused its clock).
    for c in chunks.iter_mut() {
        if c.1 >= 5_000_000 {
            c.1 += 6_000_000;
        }
    }
    let mut p = Packager::new(cfg(), (0, 0));
    feed(&mut p, &chunks);
    p.finish();
    let kinds: Vec<(u64, bool)> = p.segments().iter().map(|s| (s.msn, s.gap)).collect();
    assert_eq!(
        kinds,
        vec![
            (0, false),
            (1, false),
            (2, false),
            (3, true),
            (4, true),
            (5, false),
            (6, false),
            (7, false)
        ]
    );
    let pl = render(&p, Flavor::Classic, &|n| n.to_string()).unwrap();
    assert!(pl.contains("#EXT-X-GAP\n#EXTINF:"), "{pl}");
    assert_eq!(p.segment(3), Lookup::Missing);
}

#[test]
fn blocking_reloads_wait_answer_or_refuse() {
    let mut p = Packager::new(cfg(), (0, 0));
    let chunks = stream(7, 25);
    let upto = chunks.iter().position(|c| c.1 >= 5_100_000).unwrap();
    feed(&mut p, &chunks[..upto]);
    // Complete: 0 and 1; open: 2 with parts.
    assert_eq!(p.segments().back().unwrap().msn, 1);
    let open = p.open().unwrap();
    assert_eq!(open.msn, 2);
    let have = open.parts.len() as u64;
    assert!(have >= 1);
    assert_eq!(p.reload(1, None), Reload::Ready);
    assert_eq!(p.reload(2, None), Reload::Wait);
    assert_eq!(p.reload(2, Some(have - 1)), Reload::Ready);
    assert_eq!(p.reload(2, Some(have)), Reload::Wait);
    assert!(matches!(p.reload(2, Some(have + 6)), Reload::TooFar(_)));
    assert!(matches!(p.reload(4, None), Reload::TooFar(_)));
    assert_eq!(p.reload(3, None), Reload::Wait);
    // A part past the last of a complete segment is part 0 of the next one.
    let last_of_1 = p.segments().back().unwrap().parts.len() as u64;
    assert_eq!(p.reload(1, Some(last_of_1)), Reload::Ready);
    // The hinted part is pending; further ones are not there.
    assert_eq!(p.part(2, have as u32), Lookup::Pending);
    assert_eq!(p.part(2, have as u32 + 1), Lookup::Missing);
    assert!(matches!(p.part(2, 0), Lookup::Ready(_)));
    assert_eq!(p.segment(2), Lookup::Pending);
    feed(&mut p, &chunks[upto..]);
    assert!(matches!(p.part(2, have as u32), Lookup::Ready(_)));
    p.finish();
    assert_eq!(p.reload(99, Some(3)), Reload::Ready, "ignored once ended");
}

#[test]
fn the_playlists_carry_what_ll_hls_and_plain_players_need() {
    let mut p = Packager::new(cfg(), (0, 1_764_946_800_000));
    let chunks = stream(30, 25);
    let upto = chunks.iter().position(|c| c.1 >= 25_300_000).unwrap();
    feed(&mut p, &chunks[..upto]);
    let uri = |n: &str| format!("b1/{n}?token=T");
    let ll = render(&p, Flavor::LowLatency, &uri).unwrap();
    for tag in [
        "#EXTM3U\n#EXT-X-VERSION:6\n#EXT-X-TARGETDURATION:4\n",
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.50000,HOLD-BACK=12.00000\n",
        "#EXT-X-PART-INF:PART-TARGET=0.50000\n",
        "#EXT-X-MAP:URI=\"b1/init-",
        "#EXT-X-PROGRAM-DATE-TIME:2025-12-05T15:00:",
        ",INDEPENDENT=YES\n",
        "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"b1/12.",
    ] {
        assert!(ll.contains(tag), "missing {tag:?} in\n{ll}");
    }
    // The window: 6 segments (12 s = 3 Target Durations), parts only in the last 12 s.
    let seq: u64 = ll
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(seq, 6);
    assert_eq!(ll.matches("#EXTINF:").count(), 6);
    assert!(
        !ll.contains("\"b1/6.0.m4s"),
        "parts older than 3 TD are left out"
    );
    assert!(ll.contains("\"b1/9.0.m4s?token=T\""));
    let plain = render(&p, Flavor::Classic, &uri).unwrap();
    assert!(!plain.contains("#EXT-X-PART") && !plain.contains("PRELOAD-HINT"));
    assert!(
        plain.contains("#EXTINF:2.00000,\nb1/11.m4s?token=T\n"),
        "{plain}"
    );
    // Memory: at most twice the window of segments is kept.
    assert!(p.segments().len() <= 12);
    p.finish();
    let end = render(&p, Flavor::LowLatency, &uri).unwrap();
    assert!(end.ends_with("#EXT-X-ENDLIST\n") && !end.contains("PRELOAD-HINT"));
}

#[test]
fn resource_names_parse_strictly() {
    assert_eq!(parse_resource("12.m4s"), Some(Resource::Segment(12)));
    assert_eq!(parse_resource("12.3.m4s"), Some(Resource::Part(12, 3)));
    assert_eq!(parse_resource("12.gap.m4s"), Some(Resource::Gap(12)));
    assert_eq!(
        parse_resource("init-0a1b2c3d.mp4"),
        Some(Resource::Init(0x0a1b2c3d))
    );
    for bad in [
        "",
        "m4s",
        ".m4s",
        "-1.m4s",
        "1..m4s",
        "a.m4s",
        "1.2.3.m4s",
        "../1.m4s",
        "init-.mp4",
        "init-xyz.mp4",
        "99999999999999999999.m4s",
        "1.m4s.m4s",
    ] {
        assert_eq!(parse_resource(bad), None, "{bad:?}");
    }
    assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(iso8601(1_764_946_800_123), "2025-12-05T15:00:00.123Z");
}

#[test]
fn hostile_bodies_are_counted_not_fatal() {
    let mut p = Packager::new(cfg(), (0, 0));
    for (i, body) in [&[][..], &[0x17], &[0x17, 0], &[0xaf], &[0x17, 1, 0, 0, 0]]
        .iter()
        .enumerate()
    {
        p.push_tag(i as u64, 0, VIDEO, &Bytes::copy_from_slice(body));
    }
    // Frames without a configuration cannot be packaged.
    assert!(p.dropped >= 4);
    assert!(!p.has_media());
    assert!(render(&p, Flavor::LowLatency, &|n| n.into()).is_none());
}

/// libx264 `-preset ultrafast -tune zerolatency` (Constrained Baseline, 320×240): the record
/// ffmpeg sends over RTMP for a live encode.
#[test]
fn a_baseline_avc_record_is_understood() {
    let hex = "0142c00dffe100166742c00dda0507ec0440000003004000000ca3c50aa801000468ce0fc8";
    let rec: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let c = crate::codec::config(crate::codec::VideoCodec::Avc, Bytes::from(rec)).unwrap();
    assert_eq!((c.width, c.height), (320, 240));
    let init = crate::fmp4::init_segment(&crate::fmp4::Tracks {
        video: Some(c),
        audio: None,
    });
    assert!(init.is_ok(), "{init:?}");
}

#[test]
fn annex_b_samples_become_length_prefixed() {
    use crate::codec::annex_b_to_avcc;
    let b = [
        0, 0, 0, 1, 0xaa, 0xbb, 0, 0, 1, 0xcc, 0, 0, 0, 1, 0x65, 0, 0,
    ];
    let want = [0, 0, 0, 2, 0xaa, 0xbb, 0, 0, 0, 1, 0xcc, 0, 0, 0, 1, 0x65];
    assert_eq!(annex_b_to_avcc(&b).as_deref(), Some(&want[..]));
    // Already length-prefixed (a first NAL unit shorter than 65536 bytes): left alone.
    assert_eq!(annex_b_to_avcc(&[0, 0, 0, 5, 0x65, 1, 2, 3, 4]), None);
    // Nothing but start codes and zeros: no NAL unit, never a panic.
    assert_eq!(annex_b_to_avcc(&[0, 0, 1]).as_deref(), Some(&[][..]));
    assert_eq!(
        annex_b_to_avcc(&[0, 0, 0, 1, 0, 0]).as_deref(),
        Some(&[][..])
    );
}

/// ffmpeg's `tee` muxer with libx264 (what `firstmile assign --ffmpeg` prints): an empty AVC
/// sequence header, then Annex B keyframes carrying SPS and PPS in-band. The configuration is
/// taken from the first keyframe, samples are written length-prefixed, and the audio that came
/// before it waits for it (so the first init has both tracks).
#[test]
fn in_band_annex_b_video_from_the_tee_muxer_is_packaged() {
    use crate::codec::tests::{PPS, SPS_320X240};
    let mut chunks: Vec<Chunk> = vec![
        (0, 0, VIDEO, Bytes::from_static(&[0x17, 0, 0, 0, 0])),
        (1, 0, AUDIO, Bytes::from_static(&[0xaf, 0, 0x12, 0x10])),
    ];
    let mut seq = 2;
    for i in 0..250u64 {
        let key = i % 25 == 0;
        let mut b = vec![if key { 0x17 } else { 0x27 }, 1, 0, 0, 0];
        if key {
            for nal in [SPS_320X240, PPS] {
                b.extend_from_slice(&[0, 0, 0, 1]);
                b.extend_from_slice(nal);
            }
        }
        b.extend_from_slice(&[0, 0, 1, if key { 0x65 } else { 0x41 }]);
        b.extend_from_slice(&(i as u32).to_be_bytes());
        // Audio first at each even frame: the first audio frame comes before the first
        // keyframe (so before the video's configuration).
        if i % 2 == 0 {
            let mut a = vec![0xaf, 1];
            a.extend_from_slice(&(i as u32).to_be_bytes());
            chunks.push((seq, i as i64 * 40_000, AUDIO, Bytes::from(a)));
            seq += 1;
        }
        chunks.push((seq, i as i64 * 40_000, VIDEO, Bytes::from(b)));
        seq += 1;
    }
    let mut p = Packager::new(cfg(), (0, 0));
    feed(&mut p, &chunks);
    p.finish();
    let msns: Vec<u64> = p.segments().iter().map(|s| s.msn).collect();
    assert_eq!(msns, vec![0, 1, 2, 3, 4]);
    let init = p.init(p.segments()[0].init).expect("an init segment");
    let has = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    assert!(has(&init, SPS_320X240), "the in-band SPS is in the init");
    assert!(
        has(&init, b"mp4a"),
        "the first init has the audio track too"
    );
    // Frame 25 (the second keyframe) as AVCC: SPS, PPS, then the slice, each length-prefixed.
    let mut sample = Vec::new();
    for nal in [SPS_320X240, PPS, &[0x65, 0, 0, 0, 25][..]] {
        sample.extend_from_slice(&(nal.len() as u32).to_be_bytes());
        sample.extend_from_slice(nal);
    }
    assert!(
        has(&p.segments()[0].bytes, &sample),
        "length-prefixed samples"
    );
    // Frame 7 (not a keyframe) likewise, and not as it came.
    let seg = &p.segments()[0].bytes;
    assert!(
        has(seg, &[0, 0, 0, 5, 0x41, 0, 0, 0, 7]),
        "length-prefixed slice"
    );
    assert!(
        !has(seg, &[0, 0, 1, 0x41, 0, 0, 0, 7]),
        "no start code left"
    );
}
