//! The MPEG-TS demuxer against ffmpeg's own: real streams from ffmpeg (H.264 with B-frames, AAC)
//! compared packet by packet with what ffprobe reads from the same bytes, in any split; then
//! through the packager into fMP4 that ffprobe reads back; then hostile input.

use crate::codec::{AUDIO, Frame, Tag, Track, VIDEO, parse_tag};
use crate::packager::{Config, Packager};
use crate::ts::{PACKET, TsDemuxer, TsTag, crc32_mpeg};
use bytes::Bytes;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Run `cmd` with `input` on stdin; its stdout.
fn pipe(cmd: &mut Command, input: &[u8]) -> Vec<u8> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("ffmpeg/ffprobe installed");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        // ffprobe may stop reading early; a broken pipe is not a failure here.
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("wait");
    writer.join().expect("writer");
    assert!(out.status.success(), "{cmd:?} failed");
    out.stdout
}

/// 6 s of 320×240 H.264 (GOP 25, two B-frames) and AAC, as `ffmpeg -f mpegts` writes it.
fn fixture() -> &'static [u8] {
    static TS: OnceLock<Vec<u8>> = OnceLock::new();
    TS.get_or_init(|| {
        let ts = pipe(
            Command::new("ffmpeg").args(
                "-v error -nostdin -f lavfi -i testsrc2=size=320x240:rate=25 -f lavfi -i sine \
                 -t 6 -c:v libx264 -g 25 -bf 2 -c:a aac -f mpegts -"
                    .split_whitespace(),
            ),
            &[],
        );
        assert!(ts.len() > 100 * PACKET, "ffmpeg wrote {} bytes", ts.len());
        ts
    })
}

/// One packet as ffprobe reports it: (video?, pts, dts, key), 90 kHz.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Probed {
    video: bool,
    pts: i64,
    dts: i64,
    key: bool,
}

fn ffprobe_packets(input: &[u8], format: Option<&str>) -> Vec<Probed> {
    let mut cmd = Command::new("ffprobe");
    cmd.args(["-v", "error"]);
    if let Some(f) = format {
        cmd.args(["-f", f]);
    }
    cmd.args([
        "-show_entries",
        "packet=codec_type,pts,dts,flags",
        "-of",
        "compact",
        "-i",
        "pipe:0",
    ]);
    let out = String::from_utf8(pipe(&mut cmd, input)).expect("utf-8");
    out.lines()
        .filter(|l| l.starts_with("packet|"))
        .map(|l| {
            let field = |k: &str| {
                l.split('|')
                    .find_map(|f| f.strip_prefix(k)?.strip_prefix('='))
                    .unwrap_or_else(|| panic!("no {k} in {l}"))
            };
            Probed {
                video: field("codec_type") == "video",
                pts: field("pts").parse().expect("pts"),
                dts: field("dts").parse().expect("dts"),
                key: field("flags").starts_with('K'),
            }
        })
        .collect()
}

/// Feed `ts` cut at `cuts` (lengths, repeated), chunk `i` with seq `i`.
fn demux(ts: &[u8], cuts: &[usize]) -> (Vec<TsTag>, TsDemuxer) {
    let mut d = TsDemuxer::new();
    let mut tags = Vec::new();
    let (mut pos, mut i) = (0, 0);
    while pos < ts.len() {
        let n = cuts[i % cuts.len()].max(1).min(ts.len() - pos);
        tags.extend(d.push(i as u64, &ts[pos..pos + n]));
        pos += n;
        i += 1;
    }
    tags.extend(d.finish());
    (tags, d)
}

/// What a tag says, for comparisons across splits (seq differs with the split).
fn content(tags: &[TsTag]) -> Vec<(u8, i64, Bytes)> {
    tags.iter()
        .map(|t| (t.kind, t.dts_us, t.body.clone()))
        .collect()
}

/// A tiny deterministic generator (xorshift64*), so the hostile tests need no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn frames(tags: &[TsTag]) -> Vec<Frame> {
    tags.iter()
        .filter_map(|t| match parse_tag(t.kind, &t.body, t.dts_us) {
            Ok(Tag::Frame(f)) => Some(f),
            Ok(_) => None,
            Err(e) => panic!("a tag the packager cannot read: {e}"),
        })
        .collect()
}

#[test]
fn ffmpeg_ts_gives_the_packets_ffprobe_sees_with_b_frame_offsets() {
    let ts = fixture();
    let (tags, d) = demux(ts, &[188 * 174]);
    let probed = ffprobe_packets(ts, None);
    let origin = i64::try_from(d.origin().expect("an origin")).expect("33 bits");
    let us = |t: i64| (t - origin) * 100 / 9;
    let s = d.stats();
    assert_eq!(
        (
            s.resyncs,
            s.skipped_bytes,
            s.cc_errors,
            s.pes_dropped,
            s.psi_errors
        ),
        (0, 0, 0, 0, 0),
        "{s:?}"
    );
    assert_eq!(s.frames_dropped, 0);

    // The configurations come first and are what the packager understands.
    let configs: Vec<Tag> = tags
        .iter()
        .filter_map(|t| match parse_tag(t.kind, &t.body, t.dts_us) {
            Ok(Tag::Frame(_)) => None,
            other => Some(other.expect("a readable tag")),
        })
        .collect();
    assert_eq!(configs.len(), 2, "one video and one audio configuration");
    assert!(
        matches!(&configs[0], Tag::Video(c) if (c.width, c.height) == (320, 240)),
        "{:?}",
        configs[0]
    );
    assert!(
        matches!(&configs[1], Tag::Audio(a) if a.sample_rate == 44100 && a.channels == 1 && a.object_type == 2),
        "{:?}",
        configs[1]
    );
    assert_eq!(
        tags[0].kind, VIDEO,
        "the video configuration before any audio"
    );
    // The origin is the first PES's timestamp (ffmpeg writes video first), known from the
    // first chunk alone.
    let v_first = probed.iter().find(|p| p.video).expect("video");
    assert_eq!(origin, v_first.dts);
    let mut first_chunk = TsDemuxer::new();
    first_chunk.push(0, &ts[..188 * 174]);
    assert_eq!(first_chunk.origin(), d.origin());
    // Merged in decode order across the tracks, as an FLV muxer writes them.
    let dts: Vec<i64> = tags[2..].iter().map(|t| t.dts_us).collect();
    assert!(dts.windows(2).all(|w| w[0] <= w[1]), "{dts:?}");

    let ours = frames(&tags);
    let (v_ours, a_ours): (Vec<&Frame>, Vec<&Frame>) =
        ours.iter().partition(|f| f.track == Track::Video);
    let (v_probe, a_probe): (Vec<&Probed>, Vec<&Probed>) = probed.iter().partition(|p| p.video);
    assert_eq!(v_ours.len(), v_probe.len(), "video packets");
    assert_eq!(a_ours.len(), a_probe.len(), "audio packets");
    assert_eq!(v_probe.len(), 150);
    for (i, (o, p)) in v_ours.iter().zip(&v_probe).enumerate() {
        assert_eq!(o.key, p.key, "keyframe flag of video packet {i}");
        assert!(
            (o.dts_us - us(p.dts)).abs() <= 1000,
            "dts of {i}: {o:?} {p:?}"
        );
        let pts_us = o.dts_us + o.cts_us;
        assert!(
            (pts_us - us(p.pts)).abs() <= 1000,
            "pts of {i}: {o:?} {p:?}"
        );
    }
    assert_eq!(
        v_ours.iter().filter(|f| f.key).count(),
        6,
        "a keyframe a second"
    );
    assert!(
        v_ours.iter().filter(|f| f.cts_us > 40_000).count() > 20,
        "B-frames: many frames are shown well after they are decoded"
    );
    for (i, (o, p)) in a_ours.iter().zip(&a_probe).enumerate() {
        assert!(
            (o.dts_us - us(p.dts)).abs() <= 1000,
            "audio {i}: {o:?} {p:?}"
        );
        assert!(o.key && o.cts_us == 0);
    }
    // Samples are AVCC: length-prefixed NAL units that exactly fill the sample.
    for f in &v_ours {
        let mut rest = &f.data[..];
        while !rest.is_empty() {
            let n = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            rest = &rest[4 + n..];
        }
    }
    // Per track, decode order.
    for track in [Track::Video, Track::Audio] {
        let d: Vec<i64> = ours
            .iter()
            .filter(|f| f.track == track)
            .map(|f| f.dts_us)
            .collect();
        assert!(
            d.windows(2).all(|w| w[0] < w[1]),
            "{track:?} not increasing"
        );
    }
}

#[test]
fn the_output_does_not_depend_on_how_the_bytes_are_cut() {
    let ts = fixture();
    let (whole, _) = demux(ts, &[ts.len()]);
    assert!(whole.len() > 300);
    let mut rng = Rng(0x5eed);
    let random: Vec<usize> = (0..500).map(|_| 1 + rng.below(3000)).collect();
    for cuts in [
        &[1][..],
        &[187],
        &[188],
        &[188 * 174],
        &[7, 1000, 188, 1, 4096],
        &random,
    ] {
        let (tags, d) = demux(ts, cuts);
        assert_eq!(
            content(&tags),
            content(&whole),
            "cut {:?}",
            &cuts[..cuts.len().min(5)]
        );
        assert_eq!(d.stats().skipped_bytes, 0);
    }
}

/// A tag's seq is that of the chunk where its PES started: the first tags come with seq 0,
/// which tells the packager that it saw the broadcast's start.
#[test]
fn tags_carry_the_seq_of_the_chunk_where_they_started() {
    let ts = fixture();
    let (tags, _) = demux(ts, &[188 * 174]);
    assert_eq!(tags[0].seq, 0);
    let last = (ts.len().div_ceil(188 * 174) - 1) as u64;
    for kind in [VIDEO, AUDIO] {
        let seqs: Vec<u64> = tags
            .iter()
            .filter(|t| t.kind == kind)
            .map(|t| t.seq)
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] <= w[1]), "{kind}: {seqs:?}");
        assert!(seqs.iter().all(|&s| s <= last));
        assert!(seqs.iter().any(|&s| s + 1 >= last), "{kind}: up to the end");
    }
}

fn cfg() -> Config {
    Config {
        segment_ms: 2000,
        part_ms: 500,
        window: 6,
    }
}

fn package(tags: &[TsTag], p: &mut Packager) {
    for t in tags {
        p.push_tag(t.seq, t.dts_us, t.kind, &t.body);
    }
}

#[test]
fn a_ts_broadcast_is_packaged_into_fmp4_that_ffprobe_reads_back() {
    let ts = fixture();
    let (tags, _) = demux(ts, &[188 * 174]);
    let mut p = Packager::new(cfg(), (0, 1_764_946_800_000));
    package(&tags, &mut p);
    p.finish();
    assert_eq!(p.dropped, 0, "every frame packaged");
    let segs = p.segments();
    let msns: Vec<u64> = segs.iter().map(|s| s.msn).collect();
    assert_eq!(msns, vec![0, 1, 2]);
    assert!(segs.iter().all(|s| s.independent && !s.gap));
    let init = p.init(segs[0].init).expect("init");
    let has = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    assert!(has(&init, b"avc1") && has(&init, b"mp4a"), "both tracks");
    let mut file = init.to_vec();
    for s in segs {
        file.extend_from_slice(&s.bytes);
    }
    let back = ffprobe_packets(&file, Some("mp4"));
    let ts_probe = ffprobe_packets(ts, None);
    let count = |v: &[Probed], video: bool| v.iter().filter(|p| p.video == video).count();
    assert_eq!(count(&back, true), count(&ts_probe, true), "video samples");
    assert_eq!(
        count(&back, false),
        count(&ts_probe, false),
        "audio samples"
    );
    let keys = |v: &[Probed]| v.iter().filter(|p| p.video && p.key).count();
    assert_eq!(keys(&back), keys(&ts_probe));
    // Composition offsets survive: the mp4's video pts − dts match the TS's (90 kHz both).
    let offsets = |v: &[Probed]| -> Vec<i64> {
        v.iter()
            .filter(|p| p.video)
            .map(|p| p.pts - p.dts)
            .collect()
    };
    assert_eq!(offsets(&back), offsets(&ts_probe));
    // And ffmpeg decodes it.
    let decoded = pipe(
        Command::new("ffmpeg")
            .args("-v error -nostdin -f mp4 -i pipe:0 -f framecrc -".split_whitespace()),
        &file,
    );
    let lines = String::from_utf8_lossy(&decoded)
        .lines()
        .filter(|l| l.starts_with("0,"))
        .count();
    assert_eq!(lines, 150, "every video frame decodes");
}

/// A node that starts reading mid-broadcast (a relay, a late first viewer) is given the
/// broadcast's origin: it demuxes the same decode times and packages the same segments.
#[test]
fn a_node_starting_mid_broadcast_with_the_origin_packages_the_same_segments() {
    let ts = fixture();
    let chunk = 188 * 174;
    // Both live: neither has seen the end.
    let mut d = TsDemuxer::new();
    let mut a = Packager::new(cfg(), (0, 0));
    for (i, c) in ts.chunks(chunk).enumerate() {
        package(&d.push(i as u64, c), &mut a);
    }
    let origin = d.origin().expect("origin");
    let oa = a.open().expect("a segment in progress");
    for start in [1, 2] {
        let mut late = TsDemuxer::with_origin(origin);
        let mut b = Packager::new(cfg(), (0, 0));
        for (i, c) in ts.chunks(chunk).enumerate().skip(start) {
            package(&late.push(i as u64, c), &mut b);
        }
        assert!(late.stats().frames_dropped > 0, "it started mid-GOP");
        for s in b.segments() {
            let same = a.segments().iter().find(|x| x.msn == s.msn);
            assert_eq!(
                same.map(|x| &x.bytes),
                Some(&s.bytes),
                "segment {} differs (start {start})",
                s.msn
            );
        }
        let ob = b.open().expect("a segment in progress");
        assert_eq!((oa.msn, oa.parts.len()), (ob.msn, ob.parts.len()));
        assert!(!ob.parts.is_empty());
        for (pa, pb) in oa.parts.iter().zip(&ob.parts) {
            assert_eq!(pa.bytes, pb.bytes, "start {start}");
        }
        assert_eq!(b.segments().is_empty(), start == 2, "start {start}");
    }
}

/// Timestamps that wrap past 2³³ (26.5 h) mid-stream come out as if they had not.
#[test]
fn the_33_bit_wrap_is_unwrapped() {
    let ts = fixture();
    // The same packets, timestamps shifted so that they wrap 3 s in.
    let shifted = pipe(
        Command::new("ffmpeg").args(
            "-v error -nostdin -f mpegts -i pipe:0 -c copy -output_ts_offset 95440.3 -f mpegts -"
                .split_whitespace(),
        ),
        ts,
    );
    let (plain, _) = demux(ts, &[188 * 174]);
    let (wrapped, d) = demux(&shifted, &[188 * 174]);
    assert!(
        d.origin().expect("origin") > (1 << 33) - 90_000 * 10,
        "near the wrap"
    );
    let (fp, fw) = (frames(&plain), frames(&wrapped));
    assert_eq!(fp.len(), fw.len());
    let rel = |f: &[Frame]| -> Vec<(Track, i64, i64, bool)> {
        let t0 = f[0].dts_us;
        f.iter()
            .map(|x| (x.track, x.dts_us - t0, x.cts_us, x.key))
            .collect()
    };
    for (p, w) in rel(&fp).iter().zip(rel(&fw)) {
        assert_eq!(p.0, w.0);
        assert!((p.1 - w.1).abs() <= 1, "{p:?} vs {w:?}");
        assert_eq!((p.2, p.3), (w.2, w.3));
    }
    let last = fw.iter().map(|f| f.dts_us).max().unwrap();
    assert!(last > 5_000_000, "still going up after the wrap: {last}");
}

/// A lost chunk (a gap the relay could not fill) drops what it cut, counts it, and the
/// demuxer goes on with the right timestamps.
#[test]
fn a_lost_chunk_drops_what_it_cut_and_the_rest_comes_through() {
    let ts = fixture();
    let chunk = 188 * 174;
    let (whole, _) = demux(ts, &[chunk]);
    let mut d = TsDemuxer::new();
    let mut tags = Vec::new();
    for (i, c) in ts.chunks(chunk).enumerate() {
        if i != 2 {
            tags.extend(d.push(i as u64, c));
        }
    }
    tags.extend(d.finish());
    let s = d.stats();
    assert!(s.cc_errors >= 1 && s.pes_dropped >= 1, "{s:?}");
    let all = content(&whole);
    let got = content(&tags);
    assert!(got.len() < all.len() && got.len() > all.len() / 2);
    assert!(got.iter().all(|t| all.contains(t)), "nothing made up");
}

/// Sync lost in the middle (bytes missing or inserted, not a multiple of 188) is found again.
#[test]
fn lost_sync_is_found_again() {
    let ts = fixture();
    let (whole, _) = demux(ts, &[ts.len()]);
    let mut bad = ts[..188 * 300 + 17].to_vec();
    bad.extend_from_slice(&[0x47; 5]); // junk, with sync bytes in it
    bad.extend_from_slice(&ts[188 * 600 + 50..]);
    let (tags, d) = demux(&bad, &[1000]);
    let s = d.stats();
    assert!(s.resyncs >= 1 && s.skipped_bytes > 0, "{s:?}");
    let all = content(&whole);
    let got = content(&tags);
    assert!(got.iter().all(|t| all.contains(t)), "nothing made up");
    let last = |v: &[(u8, i64, Bytes)]| v.iter().map(|t| t.1).max().unwrap();
    assert_eq!(last(&got), last(&all), "the end of the stream came through");
    // A stream that starts mid-packet (a node joining at an unaligned chunk) syncs too.
    let (tags, d) = demux(&ts[100..], &[777]);
    assert!(!tags.is_empty());
    assert_eq!(d.stats().skipped_bytes, 88);
}

/// Random bytes, truncations, bit flips and shuffled chunks: never a panic, every tag readable
/// by the packager, buffers bounded.
#[test]
fn hostile_input_never_panics() {
    let ts = fixture();
    let mut rng = Rng(0xdead_beef);
    let mut flagged = 0;
    for round in 0..60 {
        let mut data: Vec<u8> = match round % 4 {
            // Noise, with sync bytes every 188 to get past the packet layer.
            0 => (0..188 * 200)
                .map(|i| if i % 188 == 0 { 0x47 } else { rng.next() as u8 })
                .collect(),
            // Truncated at a random point.
            1 => ts[..rng.below(ts.len())].to_vec(),
            // Bit flips.
            2 => {
                let mut v = ts.to_vec();
                for _ in 0..1 + rng.below(400) {
                    let i = rng.below(v.len());
                    v[i] ^= 1 << rng.below(8);
                }
                v
            }
            // Packets shuffled a little, some repeated.
            _ => {
                let mut pk: Vec<&[u8]> = ts.chunks(188).collect();
                for _ in 0..50 {
                    let (i, j) = (rng.below(pk.len()), rng.below(pk.len()));
                    pk.swap(i, j);
                    let k = rng.below(pk.len());
                    pk.insert(k, pk[k]);
                }
                pk.concat()
            }
        };
        if round % 8 == 3 {
            data.truncate(data.len() / 2);
        }
        let cut = 1 + rng.below(5000);
        let (tags, d) = demux(&data, &[cut]);
        for t in &tags {
            assert!(t.kind == VIDEO || t.kind == AUDIO);
            // Readable, or an error the packager counts; never a panic.
            let _ = parse_tag(t.kind, &t.body, t.dts_us);
        }
        let mut p = Packager::new(cfg(), (0, 0));
        package(&tags, &mut p);
        p.finish();
        let s = d.stats();
        match round % 4 {
            // Most flips land in media data, which nothing checks; some are seen.
            2 => {
                flagged += s.resyncs
                    + s.cc_errors
                    + s.pes_dropped
                    + s.psi_errors
                    + s.bad_packets
                    + s.adts_skipped_bytes
            }
            3 => assert!(s.cc_errors > 0, "shuffled packets are seen: {s:?}"),
            _ => {}
        }
    }
    assert!(flagged > 0, "bit flips in headers are noticed");
    // Pure noise, no sync at all: everything skipped, nothing kept.
    let noise: Vec<u8> = (0..100_000).map(|_| (rng.next() as u8) | 1).collect();
    let (tags, d) = demux(&noise, &[4096]);
    assert!(tags.is_empty());
    assert_eq!(d.stats().skipped_bytes, 100_000);
}

// ---- Hand-made streams: what ffmpeg does not write. ----

/// A minimal TS muxer for crafted streams: PAT, a PMT listing `streams` (type, pid), and
/// PES packets.
struct Mux {
    out: Vec<u8>,
    cc: std::collections::HashMap<u16, u8>,
}

impl Mux {
    fn new(streams: &[(u8, u16)]) -> Self {
        let mut m = Mux {
            out: Vec::new(),
            cc: Default::default(),
        };
        let mut pat = vec![0x00, 0xb0, 0, 0, 1, 0xc1, 0, 0, 0, 1, 0xf0, 0x00];
        m.section(0, &mut pat);
        let mut pmt = vec![0x02, 0xb0, 0, 0, 1, 0xc1, 0, 0, 0xe1, 0x00, 0xf0, 0];
        for &(t, pid) in streams {
            pmt.extend_from_slice(&[t, 0xe0 | (pid >> 8) as u8, pid as u8, 0xf0, 0]);
        }
        m.section(0x1000, &mut pmt);
        m
    }

    fn section(&mut self, pid: u16, s: &mut Vec<u8>) {
        let len = s.len() - 3 + 4;
        s[1] = 0xb0 | (len >> 8) as u8;
        s[2] = len as u8;
        let c = crc32_mpeg(s);
        s.extend_from_slice(&c.to_be_bytes());
        let mut payload = vec![0];
        payload.extend_from_slice(s);
        self.packets(pid, &payload);
    }

    /// Cut `payload` into packets (the first with PUSI), stuffing the last with an adaptation
    /// field.
    fn packets(&mut self, pid: u16, payload: &[u8]) {
        let mut first = true;
        for part in payload.chunks(184) {
            let cc = self.cc.entry(pid).or_insert(15);
            *cc = (*cc + 1) & 15;
            let mut p = vec![
                0x47,
                (if first { 0x40 } else { 0 }) | (pid >> 8) as u8,
                pid as u8,
                0x10 | *cc,
            ];
            if part.len() < 184 {
                p[3] |= 0x20;
                let af = 183 - part.len();
                p.push(af as u8);
                if af > 0 {
                    p.push(0);
                    p.resize(p.len() + af - 1, 0xff);
                }
            }
            p.extend_from_slice(part);
            assert_eq!(p.len(), 188);
            self.out.extend_from_slice(&p);
            first = false;
        }
    }

    fn pes(&mut self, pid: u16, stream_id: u8, pts: u64, data: &[u8]) {
        let ts = |v: u64| -> [u8; 5] {
            [
                0x21 | ((v >> 29) & 0x0e) as u8,
                (v >> 22) as u8,
                0x01 | ((v >> 14) & 0xfe) as u8,
                (v >> 7) as u8,
                0x01 | ((v << 1) & 0xfe) as u8,
            ]
        };
        let mut p = vec![0, 0, 1, stream_id, 0, 0, 0x80, 0x80, 5];
        p.extend_from_slice(&ts(pts));
        p.extend_from_slice(data);
        let len = p.len() - 6;
        if stream_id != 0xe0 {
            p[4..6].copy_from_slice(&(len as u16).to_be_bytes());
        }
        self.packets(pid, &p);
    }
}

/// An ADTS frame: AAC-LC 48 kHz stereo, with or without a CRC.
fn adts(raw: &[u8], crc: bool) -> Vec<u8> {
    let hl = if crc { 9 } else { 7 };
    let len = hl + raw.len();
    let mut h = vec![
        0xff,
        if crc { 0xf0 } else { 0xf1 },
        (1 << 6) | (3 << 2),
        (2 << 6) | ((len >> 11) & 3) as u8,
        (len >> 3) as u8,
        ((len & 7) << 5) as u8 | 0x1f,
        0xfc,
    ];
    if crc {
        h.extend_from_slice(&[0xab, 0xcd]);
    }
    h.extend_from_slice(raw);
    h
}

/// ADTS with CRCs, frames cut across PES packets, several per PES; HEVC reported, not demuxed.
#[test]
fn crafted_adts_with_crc_split_across_pes_and_hevc_reported() {
    let mut m = Mux::new(&[(0x0f, 0x101), (0x24, 0x102)]);
    let frames: Vec<Vec<u8>> = (0..6u8).map(|i| adts(&[i; 10], i % 2 == 0)).collect();
    let all = frames.concat();
    // PES 1: frames 0, 1 and half of 2; PES 2: the rest of 2, then 3, 4, 5.
    let cut = frames[0].len() + frames[1].len() + 5;
    m.pes(0x101, 0xc0, 90_000, &all[..cut]);
    let t3 = 90_000 + 3 * 1024 * 90_000 / 48_000;
    m.pes(0x101, 0xc0, t3, &all[cut..]);
    m.pes(0x102, 0xe0, 90_000, &[0, 0, 0, 1, 0x40, 1]);
    let (tags, d) = demux(&m.out, &[188]);
    assert_eq!(d.stats().unsupported_stream_type, Some(0x24));
    assert_eq!(d.stats().adts_skipped_bytes, 0, "{:?}", d.stats());
    let Ok(Tag::Audio(a)) = parse_tag(AUDIO, &tags[0].body, 0) else {
        panic!("{:?}", tags[0])
    };
    assert_eq!((a.object_type, a.sample_rate, a.channels), (2, 48_000, 2));
    let got: Vec<(i64, Vec<u8>)> = tags[1..]
        .iter()
        .map(|t| (t.dts_us, t.body[2..].to_vec()))
        .collect();
    let want: Vec<(i64, Vec<u8>)> = (0..6)
        .map(|i| (i * 1024 * 1_000_000 / 48_000, vec![i as u8; 10]))
        .collect();
    assert_eq!(
        got, want,
        "raw frames without header or CRC, 1024 samples apart"
    );
    // Frame 2 started in the first PES: it carries that PES's seq.
    let (tags, _) = demux(&m.out, &[188 * 3]);
    assert_eq!(
        tags.iter().map(|t| t.seq).collect::<Vec<_>>(),
        [0, 0, 0, 0, 1, 1, 1]
    );
}

/// A program announcing a video stream that never comes: audio is held only so long, then
/// flows without waiting for the video.
#[test]
fn crafted_audio_does_not_wait_forever_for_an_announced_video() {
    let mut m = Mux::new(&[(0x1b, 0x100), (0x0f, 0x101)]);
    let n = crate::ts::MAX_HELD + 500;
    for i in 0..n as u64 {
        m.pes(0x101, 0xc0, 90_000 + i * 1920, &adts(&[i as u8; 10], false));
    }
    let mut d = TsDemuxer::new();
    let live: Vec<TsTag> = m.out.chunks(188 * 10).flat_map(|c| d.push(0, c)).collect();
    assert!(
        live.len() > 400,
        "audio flows before the end: {}",
        live.len()
    );
    let rest = d.finish();
    assert_eq!(
        live.len() + rest.len(),
        n + 1,
        "the configuration and every frame"
    );
    assert!(rest.len() < 100, "not held to the end: {}", rest.len());
}

/// A PES whose declared length is longer than what came before the next one, a PES without
/// a timestamp, and one larger than the limit are dropped and counted.
#[test]
fn crafted_bad_pes_are_dropped_and_counted() {
    let mut m = Mux::new(&[(0x0f, 0x101)]);
    m.pes(0x101, 0xc0, 90_000, &adts(&[1; 10], false));
    // Declared length 400, 20 bytes sent.
    let mut short = vec![0, 0, 1, 0xc0, 1, 144, 0x80, 0, 0];
    short.extend_from_slice(&[0; 11]);
    m.packets(0x101, &short);
    m.pes(0x101, 0xc0, 92_000, &adts(&[2; 10], false));
    let (tags, d) = demux(&m.out, &[188]);
    assert_eq!(d.stats().pes_dropped, 1, "{:?}", d.stats());
    assert_eq!(tags.len(), 3, "config and two frames");
    // A video PES over the limit.
    let mut m = Mux::new(&[(0x1b, 0x100)]);
    let big = vec![0u8; crate::ts::MAX_PES + 1000];
    m.pes(0x100, 0xe0, 0, &big);
    let (tags, d) = demux(&m.out, &[188 * 1000]);
    assert!(tags.is_empty());
    assert_eq!(d.stats().pes_dropped, 1);
}

/// A node that starts reading a broadcast more than 2³³ ticks (26.5 h) in cannot tell the period
/// from the timestamps: with a time hint (the chunks' pts) it lands in the right one, so its
/// decode times (and segment numbers) are those of a node that read it all along.
#[test]
fn a_time_hint_picks_the_2_33_period_of_a_late_start() {
    let ts = fixture();
    let (plain, d) = demux(ts, &[188 * 174]);
    let origin = d.origin().expect("origin");
    let late = |hint: Option<i64>| {
        // As if 26.5 h had gone by: the same raw timestamps, one period later.
        let mut d = TsDemuxer::with_origin(origin);
        if let Some(h) = hint {
            d.time_hint(h);
        }
        let mut tags = Vec::new();
        for (i, c) in ts.chunks(188 * 174).enumerate() {
            tags.extend(d.push(i as u64, c));
        }
        tags.extend(d.finish());
        frames(&tags)
    };
    let period_us = ((1i64 << 33) * 100).div_euclid(9);
    // 26.5 h + 3 s by the chunks' clock: the next period.
    let hinted = late(Some(period_us + 3_000_000));
    let (fp, fh) = (frames(&plain), hinted);
    assert_eq!(fp.len(), fh.len());
    for (p, h) in fp.iter().zip(&fh) {
        assert!(
            (h.dts_us - p.dts_us - period_us).abs() <= 1,
            "{p:?} vs {h:?}"
        );
    }
    // A hint in the first period, or none, keeps the first period.
    for f in [late(Some(3_000_000)), late(None)] {
        assert_eq!(f[0].dts_us, fp[0].dts_us);
    }
}
