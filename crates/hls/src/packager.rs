//! The packager: FLV tags in, a sliding window of CMAF segments and parts out.
//!
//! # Where segments start, and why their numbers are the same on every node
//!
//! A Media Sequence Number (MSN) has to mean the same media on the primary, the backup and every
//! relay, so that a player reloading from another node, or a relay failing over from one ingest
//! server to the other, sees no jump. Every node holds the same chunks with the same sequence
//! numbers *and the same timestamps* (the relay merge keeps them byte for byte), so the rule
//! below is a function of the chunks alone — never of when a node started or of wall time:
//!
//! - The broadcast timeline (the chunks' decode times) is cut into **windows** of
//!   `segment_ms` (W). Window *n* is `[n·W, (n+1)·W)`.
//! - **Segment *n* starts at the first keyframe of window *n*** (of the video track; of the audio
//!   track in an audio-only stream). If window *n* has no keyframe (a GOP longer than W), it
//!   starts at the *last* frame of window *n* instead — a segment that is not independent, but
//!   the numbering stays gap-free and no segment exceeds 2·W. Both cases are decided one frame
//!   after the fact, so parts are never held back longer than that.
//! - **MSN = *n***: consecutive, because every window that holds frames holds exactly one
//!   segment start. A window without any frame (the publisher's clock jumped by more than W) is
//!   listed as an `EXT-X-GAP` segment, as RFC 8216bis §6.2.1 asks for absent media.
//! - A node decides a window only when it has seen that window from its start (a frame from an
//!   earlier window, or the broadcast's first chunk, sequence 0): it skips what it cannot be sure
//!   of rather than number it differently from the others.
//! - **Parts** are cut inside a segment from its start: each part ends at the last frame that
//!   keeps it within `part_ms` (PT), so every part is ≤ PT and, frames being short, ≥ 85 % of PT
//!   except a segment's last part and parts that start with a keyframe (RFC 8216bis §4.4.4.9).
//!   A part starting with a keyframe is `INDEPENDENT=YES`.
//!
//! Because segment *n* contains frames of at most windows *n* and *n+1*, its duration is below
//! 2·W: the Target Duration is `ceil(2·W)` seconds (4 for the default 2 s), though segments of a
//! regular 1–2 s GOP stream are W long.
//!
//! The fragment bytes depend only on the frames (and the frame after each part, for the last
//! durations), so a part or segment URL names the same bytes on every node: they are served as
//! immutable and a CDN may fetch them from any node.
//!
//! # Timing
//!
//! Time is an argument: [`Packager::new`] takes the anchor of EXT-X-PROGRAM-DATE-TIME (a
//! decode time and the Unix time it corresponds to); nothing here reads a clock.
//!
//! # Memory
//!
//! A part is emitted as soon as the frame after it (of every track) has arrived; frames wait in
//! a queue bounded by [`MAX_PENDING`]. Completed segments are kept for `2·window` segments (a
//! removed segment stays fetchable for as long again as the playlist lasts, §6.2.2), their parts
//! being slices of the segment's bytes.

use crate::codec::{AudioConfig, Frame, Tag, Track, VideoConfig, parse_tag};
use crate::fmp4::{self, AUDIO_TRACK, Run, Sample, Tracks, VIDEO_TIMESCALE, VIDEO_TRACK};
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::sync::Arc;

/// Frames waiting for their part, at most (a stream with no keyframe at all, or only one
/// track configured, cannot grow memory without bound).
pub const MAX_PENDING: usize = 4096;

/// How far (in the cut track's time) a part waits for a silent other track before it goes out
/// without it.
const LATE_TRACK_US: i64 = 2_000_000;

/// Packaging parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// W: the segment window (and target segment duration), ms.
    pub segment_ms: u32,
    /// PT: the Part Target Duration, ms.
    pub part_ms: u32,
    /// Segments listed in a playlist (at least enough for three Target Durations).
    pub window: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            segment_ms: 2000,
            part_ms: 500,
            window: 8,
        }
    }
}

impl Config {
    /// EXT-X-TARGETDURATION, seconds: every segment is shorter than 2·W.
    pub fn target_duration_s(&self) -> u64 {
        (2 * u64::from(self.segment_ms)).div_ceil(1000).max(1)
    }

    fn w_us(&self) -> i64 {
        i64::from(self.segment_ms) * 1000
    }

    fn pt_us(&self) -> i64 {
        i64::from(self.part_ms) * 1000
    }

    /// The Advance Part Limit of RFC 8216bis §6.2.5.2: 3 / PT for PT < 1 s, else 3.
    pub fn advance_part_limit(&self) -> u64 {
        if self.part_ms < 1000 {
            3000 / u64::from(self.part_ms.max(1))
        } else {
            3
        }
    }
}

/// One partial segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    pub index: u32,
    pub start_us: i64,
    pub duration_us: i64,
    pub independent: bool,
    pub bytes: Bytes,
}

/// A media segment (complete, or a gap).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub msn: u64,
    pub start_us: i64,
    pub duration_us: i64,
    pub parts: Vec<Part>,
    /// The whole segment (its parts back to back); empty for a gap.
    pub bytes: Bytes,
    pub independent: bool,
    /// A new init segment (codec change) starts here.
    pub discontinuity: bool,
    pub init: u32,
    /// EXT-X-PROGRAM-DATE-TIME, Unix ms.
    pub pdt_ms: i64,
    pub gap: bool,
}

/// The segment being filled.
#[derive(Clone, Debug)]
pub struct Open {
    pub msn: u64,
    pub start_us: i64,
    pub parts: Vec<Part>,
    pub independent: bool,
    pub discontinuity: bool,
    pub init: u32,
    pub pdt_ms: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CutKind {
    Part,
    Segment { msn: u64, independent: bool },
}

#[derive(Clone, Copy, Debug)]
struct Cut {
    at: i64,
    kind: CutKind,
}

/// What a request for a part or a segment finds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    Ready(Bytes),
    /// Not there yet but expected next (the preload hint, the segment in progress): wait.
    Pending,
    /// Never there, or no longer.
    Missing,
}

/// The answer to a blocking playlist reload (`_HLS_msn`, `_HLS_part`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reload {
    Ready,
    Wait,
    /// Further ahead than a client may ask (§6.2.5.2): answer 400 with this reason.
    TooFar(String),
}

/// The packager of one broadcast on one node.
#[derive(Debug)]
pub struct Packager {
    cfg: Config,
    video_cfg: Option<VideoConfig>,
    audio_cfg: Option<AudioConfig>,
    in_use: Option<Tracks>,
    init: Option<(u32, Bytes)>,
    inits: Vec<(u32, Bytes)>,
    // Segment boundaries (decided on the cut track).
    cut_track: Option<Track>,
    last_c: Option<(i64, u64)>,
    win_key: bool,
    certain: bool,
    seen_start: bool,
    /// A video tag came: audio waits for the video's configuration (some publishers send an
    /// empty sequence header and the SPS/PPS in-band), so that the first init has both tracks.
    video_expected: bool,
    /// The video comes as Annex B (its configuration was found in-band that way).
    annex_b: bool,
    decided_msn: Option<u64>,
    part_start: Option<i64>,
    prev_c: Option<i64>,
    cuts: VecDeque<Cut>,
    // Emission.
    pending: VecDeque<Frame>,
    max_dts: [Option<i64>; 2],
    last_delta_us: [i64; 2],
    open: Option<Open>,
    emitted_to: Option<i64>,
    segments: VecDeque<Segment>,
    disc_dropped: u64,
    anchor: (i64, i64),
    ended: bool,
    version: u64,
    /// Frames that could not be placed (no configuration, before the first segment, behind).
    pub dropped: u64,
}

fn tix(t: Track) -> usize {
    match t {
        Track::Video => 0,
        Track::Audio => 1,
    }
}

/// FNV-1a, 32 bits: the id of an init segment (its URL), equal on every node for equal bytes.
fn fnv(b: &[u8]) -> u32 {
    let mut h = 0x811c_9dc5u32;
    for &x in b {
        h ^= u32::from(x);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

impl Packager {
    /// A packager; EXT-X-PROGRAM-DATE-TIME maps decode time `anchor.0` (µs) to Unix time
    /// `anchor.1` (ms).
    pub fn new(cfg: Config, anchor: (i64, i64)) -> Self {
        Self {
            cfg,
            video_cfg: None,
            audio_cfg: None,
            in_use: None,
            init: None,
            inits: Vec::new(),
            cut_track: None,
            last_c: None,
            win_key: false,
            certain: false,
            seen_start: false,
            video_expected: false,
            annex_b: false,
            decided_msn: None,
            part_start: None,
            prev_c: None,
            cuts: VecDeque::new(),
            pending: VecDeque::new(),
            max_dts: [None; 2],
            last_delta_us: [40_000, 23_220],
            open: None,
            emitted_to: None,
            segments: VecDeque::new(),
            disc_dropped: 0,
            anchor,
            ended: false,
            version: 0,
            dropped: 0,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Bumped by every change a reader could see (a part, a segment, the end).
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Whether a playlist can be served (a first part exists, or the end).
    pub fn has_media(&self) -> bool {
        !self.segments.is_empty() || self.open.as_ref().is_some_and(|o| !o.parts.is_empty())
    }

    /// Feed one chunk: its sequence number, pts (µs) and FLV tag type and body. Tags that are not
    /// media (metadata, other codecs) are ignored; a malformed body is skipped and counted.
    pub fn push_tag(&mut self, seq: u64, pts_us: i64, kind: u8, body: &Bytes) {
        if self.ended {
            return;
        }
        if seq == 0 {
            self.seen_start = true;
        }
        if kind == crate::codec::VIDEO {
            self.video_expected = true;
        }
        match parse_tag(kind, body, pts_us.max(0)) {
            Ok(Tag::Video(c)) => self.video_cfg = Some(c),
            Ok(Tag::Audio(c)) => self.audio_cfg = Some(c),
            Ok(Tag::Frame(mut f)) => {
                // Annex B only where the configuration came in-band from Annex B: an AVCC
                // sample whose first NAL unit is 256-511 bytes long also starts with 00 00 01.
                if f.track == Track::Video
                    && (self.annex_b || self.video_cfg.is_none())
                    && let Some(d) = crate::codec::annex_b_to_avcc(&f.data)
                {
                    if self.video_cfg.is_none()
                        && f.key
                        && let Some(c) = crate::codec::avc_config_in_band(&d)
                    {
                        self.video_cfg = Some(c);
                        self.annex_b = true;
                    }
                    if self.annex_b {
                        f.data = d;
                    }
                }
                if f.track == Track::Video
                    && f.key
                    && self.video_cfg.is_none()
                    && let Some(c) = crate::codec::avc_config_in_band(&f.data)
                {
                    self.video_cfg = Some(c);
                }
                self.push_frame(f)
            }
            Ok(Tag::Other) => {}
            Err(_) => self.dropped += 1,
        }
    }

    /// Codec configurations known from elsewhere (the stream's cached head, when starting
    /// mid-broadcast): used until the stream carries its own.
    pub fn push_config_tag(&mut self, kind: u8, body: &Bytes) {
        match parse_tag(kind, body, 0) {
            Ok(Tag::Video(c)) if self.video_cfg.is_none() => self.video_cfg = Some(c),
            Ok(Tag::Audio(c)) if self.audio_cfg.is_none() => self.audio_cfg = Some(c),
            _ => {}
        }
    }

    fn window(&self, dts: i64) -> u64 {
        (dts.max(0) / self.cfg.w_us()) as u64
    }

    fn push_frame(&mut self, f: Frame) {
        let configured = match f.track {
            Track::Video => self.video_cfg.is_some(),
            Track::Audio => self.audio_cfg.is_some(),
        };
        if !configured
            || (f.track == Track::Audio && self.video_expected && self.video_cfg.is_none())
        {
            self.dropped += 1;
            return;
        }
        let cut = *self.cut_track.get_or_insert(if self.video_cfg.is_some() {
            Track::Video
        } else {
            Track::Audio
        });
        let t = tix(f.track);
        if let Some(m) = self.max_dts[t] {
            if f.dts_us < m {
                // Out of order within a track: it cannot be placed.
                self.dropped += 1;
                return;
            }
            if f.dts_us > m && f.dts_us - m < 1_000_000 {
                self.last_delta_us[t] = f.dts_us - m;
            }
        }
        self.max_dts[t] = Some(f.dts_us);
        if f.track == cut {
            self.on_cut_frame(f.dts_us, f.key || cut == Track::Audio);
        }
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
            self.dropped += 1;
        }
        self.pending.push_back(f);
        self.emit();
    }

    /// Segment and part boundaries, decided on each frame of the cut track.
    fn on_cut_frame(&mut self, dts: i64, key: bool) {
        let w = self.window(dts);
        match self.last_c {
            None => {
                self.certain = self.seen_start;
                self.win_key = false;
            }
            Some((prev, pw)) if w > pw => {
                // `prev` was the last frame of its window: a window without a keyframe starts
                // its segment there.
                if self.certain && !self.win_key {
                    self.segment_at(prev, pw, false);
                }
                self.certain = true;
                self.win_key = false;
            }
            Some((_, pw)) if w < pw => {
                // The clock went back: nothing of this can be numbered consistently.
                self.dropped += 1;
                return;
            }
            Some(_) => {}
        }
        if key && !self.win_key {
            self.win_key = true;
            if self.certain {
                self.segment_at(dts, w, true);
            }
        }
        self.last_c = Some((dts, w));
        // Parts within the decided segment.
        while let Some(a) = self.part_start {
            if dts <= a + self.cfg.pt_us() {
                break;
            }
            let b = match self.prev_c {
                Some(p) if p > a => p,
                _ => dts,
            };
            self.cuts.push_back(Cut {
                at: b,
                kind: CutKind::Part,
            });
            self.part_start = Some(b);
            if b == dts {
                break;
            }
        }
        if self.part_start.is_some() {
            self.prev_c = Some(dts);
        }
    }

    fn segment_at(&mut self, at: i64, msn: u64, independent: bool) {
        if self.decided_msn.is_some_and(|m| msn <= m) {
            return;
        }
        self.decided_msn = Some(msn);
        self.cuts.push_back(Cut {
            at,
            kind: CutKind::Segment { msn, independent },
        });
        self.part_start = Some(at);
        self.prev_c = None;
    }

    fn tracks_now(&self) -> Tracks {
        Tracks {
            video: self.video_cfg.clone(),
            audio: self.audio_cfg.clone(),
        }
    }

    /// Whether every frame before `at` has arrived (and the one after each track's last).
    fn ready(&self, at: i64) -> bool {
        if self.ended {
            return true;
        }
        let Some(tr) = &self.in_use else {
            return self.max_dts.iter().flatten().any(|&m| m >= at);
        };
        let cut = self.cut_track.map(tix).unwrap_or(0);
        let late = self.max_dts[cut].is_some_and(|m| m >= at + LATE_TRACK_US);
        let has = |t: Track| self.max_dts[tix(t)].is_some_and(|m| m >= at);
        (tr.video.is_none() || has(Track::Video) || late)
            && (tr.audio.is_none() || has(Track::Audio) || late)
    }

    fn emit(&mut self) {
        let mut changed = false;
        while let Some(&cut) = self.cuts.front() {
            if !self.ready(cut.at) {
                break;
            }
            self.cuts.pop_front();
            self.close_part(cut.at);
            if let CutKind::Segment { msn, independent } = cut.kind {
                self.start_segment(cut.at, msn, independent);
            }
            changed = true;
        }
        if changed {
            self.version += 1;
        }
    }

    /// Emit the part of the open segment that ends at `end` (if it has any frame).
    fn close_part(&mut self, end: i64) {
        let Some(open) = &self.open else {
            if self.seen_start && self.segments.is_empty() {
                // The broadcast's own start (audio before the first keyframe): it goes into the
                // first part, the way the publisher sent it.
                self.emitted_to = Some(end);
                return;
            }
            // Before the first segment of a start mid-broadcast: what came before it is not
            // packaged (other nodes start their first segment there).
            let before = self.pending.len();
            self.pending.retain(|f| f.dts_us >= end);
            self.dropped += (before - self.pending.len()) as u64;
            self.emitted_to = Some(end);
            return;
        };
        let start = self.emitted_to.unwrap_or(open.start_us);
        if end <= start {
            return;
        }
        let (mut video, mut audio) = (Vec::new(), Vec::new());
        let mut rest = VecDeque::with_capacity(self.pending.len());
        for f in self.pending.drain(..) {
            if f.dts_us < end {
                match f.track {
                    Track::Video => video.push(f),
                    Track::Audio => audio.push(f),
                }
            } else {
                rest.push_back(f);
            }
        }
        self.pending = rest;
        self.emitted_to = Some(end);
        if video.is_empty() && audio.is_empty() {
            return;
        }
        let tracks = self.in_use.clone().unwrap_or_default();
        let mut runs = Vec::new();
        let independent = match self.cut_track {
            Some(Track::Video) => video.first().is_some_and(|f| f.key && f.dts_us == start),
            _ => true,
        };
        if tracks.video.is_some() && !video.is_empty() {
            runs.push(self.run(Track::Video, &video, VIDEO_TIMESCALE));
        }
        if let Some(a) = &tracks.audio
            && !audio.is_empty()
        {
            runs.push(self.run(Track::Audio, &audio, a.sample_rate));
        }
        let open = self.open.as_mut().expect("checked above");
        let index = open.parts.len() as u32;
        let seq = (open.msn as u32).wrapping_mul(256).wrapping_add(index + 1);
        match fmp4::fragment(seq, &runs) {
            Ok(bytes) => open.parts.push(Part {
                index,
                start_us: start,
                duration_us: end - start,
                independent,
                bytes,
            }),
            Err(_) => self.dropped += (video.len() + audio.len()) as u64,
        }
    }

    /// One track's samples of a part, durations from each next frame (or the frame after the
    /// part; the last delta when there is none yet).
    fn run(&self, track: Track, frames: &[Frame], timescale: u32) -> Run {
        let ts = |us: i64| -> i64 { (i128::from(us) * i128::from(timescale) / 1_000_000) as i64 };
        let next_after = self
            .pending
            .iter()
            .find(|f| f.track == track)
            .map(|f| f.dts_us);
        let default = match track {
            Track::Audio => 1024,
            Track::Video => ts(self.last_delta_us[0]).max(1),
        };
        let samples = frames
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let next = frames.get(i + 1).map(|n| n.dts_us).or(next_after);
                let d = next.map(|n| ts(n) - ts(f.dts_us)).unwrap_or(default);
                let duration = if d <= 0 || d > i64::from(timescale) * 10 {
                    default
                } else {
                    d
                };
                Sample {
                    duration: duration as u32,
                    cts: i32::try_from(ts(f.cts_us)).unwrap_or(0),
                    key: f.key,
                    data: f.data.clone(),
                }
            })
            .collect();
        Run {
            track: match track {
                Track::Video => VIDEO_TRACK,
                Track::Audio => AUDIO_TRACK,
            },
            base_decode_time: ts(frames[0].dts_us).max(0) as u64,
            samples,
        }
    }

    fn pdt_ms(&self, dts_us: i64) -> i64 {
        self.anchor.1 + (dts_us - self.anchor.0).div_euclid(1000)
    }

    fn finish_segment(&mut self, end: i64) -> Option<u64> {
        let open = self.open.take()?;
        if open.parts.is_empty() {
            return Some(open.msn);
        }
        let mut whole = BytesMut::with_capacity(open.parts.iter().map(|p| p.bytes.len()).sum());
        for p in &open.parts {
            whole.extend_from_slice(&p.bytes);
        }
        let whole = whole.freeze();
        let mut at = 0;
        let parts = open
            .parts
            .into_iter()
            .map(|mut p| {
                let n = p.bytes.len();
                p.bytes = whole.slice(at..at + n);
                at += n;
                p
            })
            .collect();
        self.segments.push_back(Segment {
            msn: open.msn,
            start_us: open.start_us,
            duration_us: end - open.start_us,
            parts,
            bytes: whole,
            independent: open.independent,
            discontinuity: open.discontinuity,
            init: open.init,
            pdt_ms: open.pdt_ms,
            gap: false,
        });
        self.trim();
        Some(open.msn)
    }

    fn start_segment(&mut self, at: i64, msn: u64, independent: bool) {
        let prev = self.finish_segment(at);
        // Windows without any frame between the previous segment and this one.
        if let Some(p) = prev
            && msn > p + 1
        {
            let gaps = msn - p - 1;
            // The previous segment ends with its last frame, the gaps fill the rest.
            let end = self.segments.back().map_or(at, |s| {
                let media_end = s.start_us
                    + s.parts
                        .iter()
                        .map(|p| p.duration_us)
                        .sum::<i64>()
                        .min(at - s.start_us);
                media_end.min(at)
            });
            let each = ((at - end) / gaps as i64).max(1);
            for i in 0..gaps {
                let start = end + each * i as i64;
                self.segments.push_back(Segment {
                    msn: p + 1 + i,
                    start_us: start,
                    duration_us: each,
                    parts: Vec::new(),
                    bytes: Bytes::new(),
                    independent: false,
                    discontinuity: false,
                    init: self.init.as_ref().map_or(0, |i| i.0),
                    pdt_ms: self.pdt_ms(start),
                    gap: true,
                });
            }
            self.trim();
        }
        let tracks = self.tracks_now();
        let mut discontinuity = false;
        if self.in_use.as_ref() != Some(&tracks)
            && let Ok(bytes) = fmp4::init_segment(&tracks)
        {
            let id = fnv(&bytes);
            discontinuity = self.init.is_some();
            self.init = Some((id, bytes.clone()));
            if !self.inits.iter().any(|(i, _)| *i == id) {
                self.inits.push((id, bytes));
            }
            self.in_use = Some(tracks);
        }
        let Some((init, _)) = &self.init else {
            return;
        };
        self.open = Some(Open {
            msn,
            start_us: at,
            parts: Vec::new(),
            independent,
            discontinuity,
            init: *init,
            pdt_ms: self.pdt_ms(at),
        });
        self.emitted_to = Some(at);
    }

    fn trim(&mut self) {
        let keep = self.cfg.window.max(1) * 2;
        while self.segments.len() > keep {
            if let Some(s) = self.segments.pop_front()
                && s.discontinuity
            {
                self.disc_dropped += 1;
            }
        }
        let live: Vec<u32> = self
            .segments
            .iter()
            .map(|s| s.init)
            .chain(self.init.as_ref().map(|i| i.0))
            .collect();
        self.inits.retain(|(id, _)| live.contains(id));
    }

    /// The broadcast ended: everything pending goes out, the playlist gets EXT-X-ENDLIST.
    pub fn finish(&mut self) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.emit();
        let end = self
            .pending
            .iter()
            .map(|f| f.dts_us + self.last_delta_us[tix(f.track)])
            .max()
            .into_iter()
            .chain(self.emitted_to)
            .max();
        if let Some(end) = end {
            self.close_part(end);
            self.finish_segment(end);
        }
        self.pending.clear();
        self.version += 1;
    }

    /// Completed segments held (listed or kept for late fetches), oldest first.
    pub fn segments(&self) -> &VecDeque<Segment> {
        &self.segments
    }

    /// The segment being filled.
    pub fn open(&self) -> Option<&Open> {
        self.open.as_ref()
    }

    /// An init segment by id.
    pub fn init(&self, id: u32) -> Option<Bytes> {
        self.inits
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, b)| b.clone())
    }

    /// Discontinuities in segments no longer held (EXT-X-DISCONTINUITY-SEQUENCE).
    pub fn discontinuities_dropped(&self) -> u64 {
        self.disc_dropped
    }

    /// Part `index` of segment `msn`.
    pub fn part(&self, msn: u64, index: u32) -> Lookup {
        if let Some(s) = self.segments.iter().find(|s| s.msn == msn) {
            return s
                .parts
                .get(index as usize)
                .map_or(Lookup::Missing, |p| Lookup::Ready(p.bytes.clone()));
        }
        match &self.open {
            Some(o) if o.msn == msn => match o.parts.get(index as usize) {
                Some(p) => Lookup::Ready(p.bytes.clone()),
                None if index as usize == o.parts.len() && !self.ended => Lookup::Pending,
                None => Lookup::Missing,
            },
            _ => Lookup::Missing,
        }
    }

    /// Segment `msn`.
    pub fn segment(&self, msn: u64) -> Lookup {
        if let Some(s) = self.segments.iter().find(|s| s.msn == msn) {
            return if s.gap {
                Lookup::Missing
            } else {
                Lookup::Ready(s.bytes.clone())
            };
        }
        match &self.open {
            Some(o) if o.msn == msn && !self.ended => Lookup::Pending,
            _ => Lookup::Missing,
        }
    }

    /// Whether a blocking reload for `msn` (and `part`) can be answered (RFC 8216bis §6.2.5.2).
    pub fn reload(&self, msn: u64, part: Option<u64>) -> Reload {
        if self.ended {
            return Reload::Ready;
        }
        let last = self.segments.back().map(|s| s.msn);
        let open = self.open.as_ref();
        let reference = last.or(open.map(|o| o.msn.saturating_sub(1)));
        if let Some(r) = reference
            && msn > r + 2
        {
            return Reload::TooFar(format!(
                "_HLS_msn={msn} is more than two segments past the last one ({r})"
            ));
        }
        let Some(p) = part else {
            return if last.is_some_and(|l| l >= msn) {
                Reload::Ready
            } else {
                Reload::Wait
            };
        };
        // A part past a complete segment's last is part 0 of the next segment.
        let (msn, p) = match self.segments.iter().find(|s| s.msn == msn) {
            Some(s) if (p as usize) < s.parts.len() => return Reload::Ready,
            Some(_) => (msn + 1, 0),
            None if last.is_some_and(|l| msn <= l) => return Reload::Ready,
            None => (msn, p),
        };
        let limit = self.cfg.advance_part_limit();
        match open {
            Some(o) if o.msn > msn => Reload::Ready,
            Some(o) if o.msn == msn => {
                let have = o.parts.len() as u64;
                if p < have {
                    Reload::Ready
                } else if p - have >= limit {
                    Reload::TooFar(format!(
                        "_HLS_part={p} is more than {limit} parts past the last one"
                    ))
                } else {
                    Reload::Wait
                }
            }
            Some(o) => {
                let nominal = u64::from(self.cfg.segment_ms / self.cfg.part_ms.max(1)).max(1);
                let remaining = nominal.saturating_sub(o.parts.len() as u64);
                let ahead = remaining + (msn - o.msn - 1) * nominal + p;
                if ahead >= limit {
                    Reload::TooFar(format!(
                        "_HLS_msn={msn}&_HLS_part={p} is more than {limit} parts ahead"
                    ))
                } else {
                    Reload::Wait
                }
            }
            None => Reload::Wait,
        }
    }
}

/// An init segment's URL id for a [`Segment::init`].
pub fn init_name(id: u32) -> String {
    format!("init-{id:08x}.mp4")
}

/// Keeps [`Arc`] in the public API stable for callers sharing packagers.
pub type Shared = Arc<std::sync::Mutex<Packager>>;
