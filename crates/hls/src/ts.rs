//! MPEG-TS bytes → FLV-shaped tags, streaming (pure).
//!
//! **What.** A broadcast pushed as MPEG-TS (ffmpeg `-f mpegts` piped into `firstmile push`, or
//! HTTP push) is stored as chunks that are arbitrary slices of the TS byte stream. The
//! [`Packager`](crate::Packager) eats FLV tag bodies; [`TsDemuxer`] turns the TS bytes, fed in
//! any split, into exactly such tags, so a TS broadcast goes through the unchanged packager:
//!
//! | TS | tags out |
//! |---|---|
//! | H.264 (stream_type 0x1B), one access unit per PES | at every keyframe whose SPS/PPS differ from the last ones: an AVC sequence header `17 00 000000 avcC`; then per access unit `17`/`27` (IDR or not), `01`, composition offset (SI24, ms), the NAL units **length-prefixed** (AVCC) |
//! | AAC in ADTS (stream_type 0x0F), any number of frames per PES | whenever profile, rate or channels change: `AF 00` + AudioSpecificConfig (2 bytes); per ADTS frame `AF 01` + the raw frame (header and CRC removed), at PES pts + i·1024/rate |
//!
//! The video is converted to AVCC with a sequence header (rather than passed on as Annex B for
//! the packager's in-band path) because that path only ever takes the *first* configuration:
//! an explicit sequence header per change gives a new init segment when the encoder changes
//! resolution, needs no "does this look like a start code" guess, and the tags are valid FLV
//! (what HTTP-FLV players expect) should anything else want them.
//!
//! **Timestamps.** 33-bit 90 kHz PTS/DTS are made relative to an *origin*, taken modulo 2³³
//! and unwrapped per track. The origin is a 90 kHz value: by default the first PES timestamp in
//! the bytes this demuxer reads (the broadcast's first chunk alone gives it), or one given with
//! [`TsDemuxer::with_origin`]. Taking the distance to a fixed origin modulo 2³³ (rather than
//! unwrapping absolute values from wherever a node started) makes the result a function of the
//! bytes and the origin alone, so every node that is given the broadcast's origin computes the
//! same decode times, and so the same segment numbers, for the first 26.5 hours of a broadcast
//! (2³³ ticks); a value up to 60 s *before* the origin (another track starting a little
//! earlier) comes out negative. Decode times are µs from the origin; a tag's `dts_us` is its
//! decode time, as an FLV tag's timestamp is, so a TS broadcast starts near 0 like an RTMP one.
//!
//! **Use.** A node reading a broadcast from its first chunk: [`TsDemuxer::new`], and keep its
//! [`origin`](TsDemuxer::origin) with the broadcast; a node starting later:
//! [`TsDemuxer::with_origin`]. Each chunk goes in with its sequence number,
//! `push(seq, &payload)`, each tag out to `packager.push_tag(tag.seq, tag.dts_us, tag.kind,
//! &tag.body)`: a tag carries the seq of the chunk where its PES started, so the broadcast's
//! first frames carry seq 0, which tells the packager it saw the start.
//!
//! **Order.** Tags come out as an FLV muxer would write them: in decode order across the tracks,
//! as RTMP publishers send them. The TS order is not that: a video PES usually has no length and
//! ends only at the next one, and muxers pack several audio frames per PES and interleave
//! loosely, so audio and video run up to a second apart. The packager relies on the merge: it
//! picks the track it cuts segments on from the first frame it gets, builds its first init
//! segment from the configurations known when the first segment starts, and a node starting
//! mid-broadcast decides its first segment as soon as one track reaches it. So:
//!
//! - at the start, tags are held back until every stream the program announces has its
//!   configuration (at most [`MAX_HELD`] tags, [`MAX_HELD_BYTES`] bytes or
//!   [`MAX_START_WAIT_US`] of decode time; past that the missing stream is taken as
//!   absent), then each track's first configuration goes out before any frame;
//! - then the two tracks are merged by decode time: a tag goes out once the other track has a
//!   later one, or once the other track has been silent while this one went on for
//!   [`MAX_WAIT_US`] (it is then not waited for until it sends again).
//!
//! The cost is latency: audio waits for the next video frame (one frame interval, plus the
//! PES it ends); no clock is involved, so every node merges the same way.
//!
//! **Hostile input.** Lost sync is found again (a position where 0x47 repeats every 188 bytes,
//! three times) and the PES in progress are dropped (the packet before the loss was probably
//! cut and filled with what followed); packets with the transport error flag, a reserved adaptation field control or
//! an adaptation field longer than the packet are skipped; a continuity counter jump drops the
//! PES in progress; PSI sections are CRC-checked; a PES over [`MAX_PES`] is dropped; only the
//! PAT, one PMT and two elementary PIDs are ever tracked, so state is bounded whatever comes.
//! Everything is counted in [`TsStats`]; nothing panics (a property test feeds random, cut and
//! bit-flipped streams).
//!
//! **What not.** Not HEVC yet (stream_type 0x24 is ignored and reported in
//! [`TsStats::unsupported_stream_type`]), not MPEG audio, AC-3, subtitles or SCTE-35 (ignored);
//! one program (the first in the PAT); no PCR-based clock recovery (decode times come from the
//! PES headers; a timestamp jump backwards in the source stays a jump backwards).

use crate::codec::{AUDIO, VIDEO, annex_b_to_avcc, avc_config_in_band};
use bytes::Bytes;
use std::collections::VecDeque;

/// MPEG-TS packet size.
pub const PACKET: usize = 188;
const SYNC: u8 = 0x47;
/// A PES (one access unit, or a run of audio frames) larger than this is dropped.
pub const MAX_PES: usize = 8 << 20;
/// Tags held back at the start waiting for every stream's configuration, at most.
pub const MAX_HELD: usize = 2048;
/// Bytes of tags held back (at the start, or waiting for a silent track), at most: past it the
/// missing stream is taken as absent, so a demuxer's memory is bounded whatever comes.
pub const MAX_HELD_BYTES: usize = 32 << 20;
/// How much decode time the start may hold back waiting for every stream's configuration (a
/// video stream joined mid-GOP configures at its next keyframe).
pub const MAX_START_WAIT_US: i64 = 10_000_000;
/// How far (in its own decode time; or [`MAX_HELD`] tags) one track goes on while the other is
/// silent before the other is no longer waited for.
pub const MAX_WAIT_US: i64 = 1_000_000;
/// The largest PSI section (ISO/IEC 13818-1: section_length ≤ 1021).
const MAX_SECTION: usize = 1024;
const WRAP: i64 = 1 << 33;
/// How far before the origin a first timestamp may be and still count as "before" (60 s).
const BEFORE_ORIGIN: i64 = 60 * 90_000;

const PAT_PID: u16 = 0;
const STREAM_H264: u8 = 0x1b;
const STREAM_AAC_ADTS: u8 = 0x0f;

/// One FLV-shaped tag: give it to [`Packager::push_tag`](crate::Packager::push_tag) as
/// `push_tag(seq, dts_us, kind, &body)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TsTag {
    /// [`VIDEO`] (9) or [`AUDIO`] (8).
    pub kind: u8,
    /// Decode time, µs from the origin.
    pub dts_us: i64,
    /// The FLV tag body.
    pub body: Bytes,
    /// The `seq` given with the bytes holding the first TS packet of this tag's PES.
    pub seq: u64,
}

/// Counters of what was wrong with the input (all only grow).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TsStats {
    /// 188-byte packets read.
    pub packets: u64,
    /// Times the sync byte was missing where expected (then searched for again).
    pub resyncs: u64,
    /// Bytes thrown away while searching for sync (a cut first packet included).
    pub skipped_bytes: u64,
    /// Packets with the transport error indicator set, a reserved adaptation field control or an
    /// adaptation field running past the packet.
    pub bad_packets: u64,
    /// Continuity counter jumps on a tracked PID.
    pub cc_errors: u64,
    /// PES dropped: cut by a continuity error or the stream's end, over [`MAX_PES`], no start
    /// code, no timestamp, a header running past its data.
    pub pes_dropped: u64,
    /// PSI sections (PAT, PMT) rejected: bad CRC, bad length, wrong table.
    pub psi_errors: u64,
    /// Bytes of audio PES data that were not an ADTS frame (or one with several raw blocks).
    pub adts_skipped_bytes: u64,
    /// Frames not turned into tags: video before its first SPS/PPS (a start mid-GOP), access
    /// units without a NAL unit, audio frames with no timestamp to go by.
    pub frames_dropped: u64,
    /// The stream_type of an elementary stream of the program that is not demuxed (e.g. 0x24,
    /// HEVC), the last one seen.
    pub unsupported_stream_type: Option<u8>,
}

/// A PES being reassembled.
#[derive(Debug, Default)]
struct Pes {
    data: Vec<u8>,
    /// The declared PES_packet_length + 6, when not 0 (unbounded).
    expected: Option<usize>,
    seq: u64,
    /// Too large, or cut: drop the rest until the next start.
    broken: bool,
}

#[derive(Debug, Default)]
struct Es {
    pid: Option<u16>,
    cc: Option<u8>,
    pes: Option<Pes>,
    /// The last raw 90 kHz timestamp and its unwrapped value relative to the origin.
    last: Option<(u64, i64)>,
}

#[derive(Debug, Default)]
struct Psi {
    cc: Option<u8>,
    section: Vec<u8>,
}

/// The audio track's state between PES packets.
#[derive(Debug, Default)]
struct AudioState {
    /// The ADTS header fields of the last AudioSpecificConfig sent: (object type, rate index,
    /// channels).
    config: Option<(u8, u8, u8)>,
    /// An ADTS frame cut by the end of a PES.
    carry: Vec<u8>,
    /// The decode time (µs) of the next frame, when known.
    next_us: Option<i64>,
    carry_seq: u64,
}

/// The streaming demuxer; see the module docs.
#[derive(Debug, Default)]
pub struct TsDemuxer {
    buf: Vec<u8>,
    synced: bool,
    pat: Psi,
    pmt_pid: Option<u16>,
    pmt: Psi,
    video: Es,
    audio: Es,
    audio_state: AudioState,
    /// The avcC record last sent.
    avc_record: Option<Bytes>,
    /// Tags waiting to be merged in decode order: video, audio.
    queues: [VecDeque<TsTag>; 2],
    /// Bytes of the tags in `queues`.
    queued_bytes: usize,
    /// Every announced stream was configured, or waiting for that gave up: tags flow.
    flowing: bool,
    /// A track not waited for: silent while the other went on for [`MAX_WAIT_US`].
    stalled: [bool; 2],
    origin: Option<u64>,
    /// Roughly how far into the broadcast the first bytes fed are (90 kHz ticks from the origin):
    /// picks the 2³³-tick period of each track's first timestamp (see [`TsDemuxer::time_hint`]).
    hint: Option<i64>,
    out: Vec<TsTag>,
    stats: TsStats,
}

impl TsDemuxer {
    /// A demuxer whose origin is the first PES timestamp it reads.
    pub fn new() -> Self {
        Self::default()
    }

    /// A demuxer whose decode times count from `origin` (a 33-bit 90 kHz timestamp: the
    /// broadcast's [`origin`](Self::origin) as learned by a demuxer that read it from the start).
    pub fn with_origin(origin: u64) -> Self {
        Self {
            origin: Some(origin & (WRAP as u64 - 1)),
            ..Self::default()
        }
    }

    /// The origin of the decode times (90 kHz), once known.
    pub fn origin(&self) -> Option<u64> {
        self.origin
    }

    /// Say roughly how far into the broadcast (µs from its start) the next bytes are, before
    /// they are pushed. 33-bit timestamps repeat every 2³³ ticks (26.5 h): a node that starts
    /// reading a broadcast later than that cannot tell from them alone which period it is in;
    /// each track's first timestamp is then put in the period nearest this hint (any clock that
    /// every node shares to within 13 h will do: the chunks' pts), so every node computes the
    /// same timeline however late it starts. Without a hint the first period is assumed.
    pub fn time_hint(&mut self, us: i64) {
        self.hint = Some(us.saturating_mul(9) / 100);
    }

    pub fn stats(&self) -> TsStats {
        self.stats
    }

    /// Feed the next bytes of the stream (any split); `seq` is carried into the tags whose PES
    /// starts in them. Returns the tags these bytes completed.
    pub fn push(&mut self, seq: u64, bytes: &[u8]) -> Vec<TsTag> {
        self.buf.extend_from_slice(bytes);
        self.run(seq, false);
        std::mem::take(&mut self.out)
    }

    /// The end of the stream: the last PES of each track is completed (a cut one is dropped),
    /// held tags go out.
    pub fn finish(&mut self) -> Vec<TsTag> {
        self.run(u64::MAX, true);
        self.stats.skipped_bytes += self.buf.len() as u64;
        self.buf.clear();
        for track in [Track::Video, Track::Audio] {
            if let Some(p) = self.es(track).pes.take() {
                self.complete(track, p);
            }
        }
        self.drain(true);
        std::mem::take(&mut self.out)
    }

    /// Read every whole packet in the buffer (at the end, `eof`: trust a sync byte without the
    /// two after it).
    fn run(&mut self, seq: u64, eof: bool) {
        let buf = std::mem::take(&mut self.buf);
        let mut pos = 0;
        loop {
            if !self.synced {
                match find_sync(&buf[pos..], eof) {
                    Some(i) => {
                        self.stats.skipped_bytes += i as u64;
                        pos += i;
                        self.synced = true;
                    }
                    None => {
                        // Keep what could still be the start of a synced run.
                        let keep = (buf.len() - pos).min(2 * PACKET);
                        self.stats.skipped_bytes += (buf.len() - pos - keep) as u64;
                        pos = buf.len() - keep;
                        break;
                    }
                }
            }
            let Some(pkt) = buf.get(pos..pos + PACKET) else {
                break;
            };
            if pkt[0] != SYNC {
                self.synced = false;
                self.lost_sync();
                self.stats.skipped_bytes += 1;
                pos += 1;
                continue;
            }
            self.packet(pkt, seq);
            pos += PACKET;
        }
        let mut buf = buf;
        buf.drain(..pos);
        self.buf = buf;
    }

    fn es(&mut self, t: Track) -> &mut Es {
        match t {
            Track::Video => &mut self.video,
            Track::Audio => &mut self.audio,
        }
    }

    fn packet(&mut self, p: &[u8], seq: u64) {
        self.stats.packets += 1;
        let tei = p[1] & 0x80 != 0;
        let pusi = p[1] & 0x40 != 0;
        let pid = (u16::from(p[1] & 0x1f) << 8) | u16::from(p[2]);
        let afc = (p[3] >> 4) & 3;
        let cc = p[3] & 0x0f;
        if tei || afc == 0 {
            self.stats.bad_packets += 1;
            return;
        }
        let mut start = 4;
        let mut discontinuity = false;
        if afc & 2 != 0 {
            let len = usize::from(p[4]);
            // With a payload, the adaptation field leaves at least one byte of it.
            let max = if afc == 3 { 182 } else { 183 };
            if len > max {
                self.stats.bad_packets += 1;
                return;
            }
            // Keyframes are told by their IDR NAL unit, not by random_access_indicator.
            discontinuity = len > 0 && p[5] & 0x80 != 0;
            start = 5 + len;
        }
        let has_payload = afc & 1 != 0;
        let payload = &p[start..];
        if pid == PAT_PID || Some(pid) == self.pmt_pid {
            let is_pat = pid == PAT_PID;
            let psi = if is_pat { &mut self.pat } else { &mut self.pmt };
            if !has_payload {
                return;
            }
            match check_cc(&mut psi.cc, cc, discontinuity) {
                Cc::Duplicate => return,
                Cc::Jump => {
                    self.stats.cc_errors += 1;
                    psi.section.clear();
                }
                Cc::Next => {}
            }
            if let Some(section) = gather_section(psi, pusi, payload) {
                if is_pat {
                    self.on_pat(&section);
                } else {
                    self.on_pmt(&section);
                }
            }
            return;
        }
        let track = if Some(pid) == self.video.pid {
            Track::Video
        } else if Some(pid) == self.audio.pid {
            Track::Audio
        } else {
            return;
        };
        if !has_payload {
            return;
        }
        let es = self.es(track);
        match check_cc(&mut es.cc, cc, discontinuity) {
            Cc::Duplicate => return,
            Cc::Jump => {
                self.stats.cc_errors += 1;
                if let Some(p) = self.es(track).pes.take()
                    && !p.broken
                {
                    self.stats.pes_dropped += 1;
                }
                if track == Track::Audio {
                    self.audio_state.carry.clear();
                }
            }
            Cc::Next => {}
        }
        if pusi {
            if let Some(prev) = self.es(track).pes.take() {
                self.complete(track, prev);
            }
            // The origin is the first timestamp in byte order, known from the PES header: the
            // broadcast's first chunk alone gives it, however long its first frame.
            if self.origin.is_none()
                && let Some(h) = parse_pes(payload, None)
            {
                self.origin = h.dts.or(h.pts);
            }
            self.es(track).pes = Some(Pes {
                data: Vec::new(),
                expected: None,
                seq,
                broken: false,
            });
        }
        let Some(pes) = self.es(track).pes.as_mut() else {
            return; // the middle of a PES whose start was not seen
        };
        if pes.broken {
            return;
        }
        if pes.data.len() + payload.len() > MAX_PES {
            pes.broken = true;
            pes.data = Vec::new();
            self.stats.pes_dropped += 1;
            return;
        }
        pes.data.extend_from_slice(payload);
        if pes.expected.is_none() && pes.data.len() >= 6 {
            let len = usize::from(u16::from_be_bytes([pes.data[4], pes.data[5]]));
            if len > 0 {
                pes.expected = Some(len + 6);
            }
        }
        if pes.expected.is_some_and(|n| pes.data.len() >= n)
            && let Some(p) = self.es(track).pes.take()
        {
            self.complete(track, p);
        }
    }

    fn on_pat(&mut self, s: &[u8]) {
        let Some(body) = section_body(s, 0x00) else {
            self.stats.psi_errors += 1;
            return;
        };
        let pmt = body
            .chunks_exact(4)
            .find(|e| u16::from_be_bytes([e[0], e[1]]) != 0)
            .map(|e| (u16::from(e[2] & 0x1f) << 8) | u16::from(e[3]));
        if pmt != self.pmt_pid {
            self.pmt_pid = pmt;
            self.pmt = Psi::default();
        }
    }

    fn on_pmt(&mut self, s: &[u8]) {
        let Some(body) = section_body(s, 0x02) else {
            self.stats.psi_errors += 1;
            return;
        };
        // PCR PID (2), program_info_length (2), descriptors, then the stream loop.
        let Some(info) = body.get(2..4) else {
            self.stats.psi_errors += 1;
            return;
        };
        let info_len = usize::from(u16::from_be_bytes([info[0], info[1]]) & 0x0fff);
        let Some(mut rest) = body.get(4 + info_len..) else {
            self.stats.psi_errors += 1;
            return;
        };
        let (mut video, mut audio) = (None, None);
        while rest.len() >= 5 {
            let stream_type = rest[0];
            let pid = (u16::from(rest[1] & 0x1f) << 8) | u16::from(rest[2]);
            let es_len = usize::from(u16::from_be_bytes([rest[3], rest[4]]) & 0x0fff);
            match stream_type {
                STREAM_H264 if video.is_none() => video = Some(pid),
                STREAM_AAC_ADTS if audio.is_none() => audio = Some(pid),
                _ => self.stats.unsupported_stream_type = Some(stream_type),
            }
            let Some(r) = rest.get(5 + es_len..) else {
                self.stats.psi_errors += 1;
                return;
            };
            rest = r;
        }
        if video != self.video.pid {
            if self.video.pes.take().is_some_and(|p| !p.broken) {
                self.stats.pes_dropped += 1;
            }
            self.video.pid = video;
            self.video.cc = None;
        }
        if audio != self.audio.pid {
            if self.audio.pes.take().is_some_and(|p| !p.broken) {
                self.stats.pes_dropped += 1;
            }
            self.audio.pid = audio;
            self.audio.cc = None;
            self.audio_state.carry.clear();
        }
    }

    /// A whole PES (or the last, unbounded one at the end).
    fn complete(&mut self, track: Track, pes: Pes) {
        if pes.broken {
            return;
        }
        if pes.expected.is_some_and(|n| pes.data.len() < n) {
            self.stats.pes_dropped += 1; // cut short by the next start or the end
            return;
        }
        let Some(h) = parse_pes(&pes.data, pes.expected) else {
            self.stats.pes_dropped += 1;
            return;
        };
        match track {
            Track::Video => self.video_pes(&h, pes.seq),
            Track::Audio => self.audio_pes(&h, pes.seq),
        }
    }

    /// A 90 kHz timestamp of `track` → ticks from the origin, unwrapped.
    fn unwrap(&mut self, track: Track, raw: u64) -> i64 {
        let origin = *self.origin.get_or_insert(raw);
        let hint = self.hint;
        let es = self.es(track);
        let rel = match es.last {
            Some((last_raw, last_rel)) => last_rel + signed33(raw.wrapping_sub(last_raw)),
            None => {
                let d = (raw.wrapping_sub(origin) as i64).rem_euclid(WRAP);
                let d = if d >= WRAP - BEFORE_ORIGIN {
                    d - WRAP
                } else {
                    d
                };
                match hint {
                    // The period whose value is nearest the hint.
                    Some(h) => {
                        let k = (h.saturating_sub(d) as f64 / WRAP as f64).round() as i64;
                        d.saturating_add(k.saturating_mul(WRAP))
                    }
                    None => d,
                }
            }
        };
        es.last = Some((raw, rel));
        rel
    }

    fn video_pes(&mut self, h: &PesData<'_>, seq: u64) {
        let Some(pts) = h.pts else {
            self.stats.pes_dropped += 1;
            return;
        };
        let dts = h.dts.unwrap_or(pts);
        let dts_rel = self.unwrap(Track::Video, dts);
        let pts_rel = dts_rel + signed33(pts.wrapping_sub(dts));
        let Some(avcc) = annex_b_to_avcc(h.payload) else {
            self.stats.pes_dropped += 1; // not Annex B
            return;
        };
        let mut key = false;
        let mut rest = &avcc[..];
        while let Some(len) = rest.get(..4) {
            let n = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            if rest.get(4).is_some_and(|b| b & 0x1f == 5) {
                key = true;
            }
            rest = rest.get(4 + n..).unwrap_or(&[]);
        }
        if avcc.is_empty() {
            self.stats.frames_dropped += 1;
            return;
        }
        let dts_us = ticks_to_us(dts_rel);
        if key
            && let Some(c) = avc_config_in_band(&avcc)
            && self.avc_record.as_ref() != Some(&c.record)
        {
            let mut b = Vec::with_capacity(5 + c.record.len());
            b.extend_from_slice(&[0x17, 0, 0, 0, 0]);
            b.extend_from_slice(&c.record);
            self.avc_record = Some(c.record);
            self.emit(TsTag {
                kind: VIDEO,
                dts_us,
                body: Bytes::from(b),
                seq,
            });
        }
        if self.avc_record.is_none() {
            self.stats.frames_dropped += 1; // no configuration yet (a start mid-GOP)
            return;
        }
        let cts_ms = (ticks_to_us(pts_rel) - dts_us + 500).div_euclid(1000);
        let cts = cts_ms.clamp(-(1 << 23), (1 << 23) - 1) as i32;
        let mut b = Vec::with_capacity(5 + avcc.len());
        b.push(if key { 0x17 } else { 0x27 });
        b.push(1);
        b.extend_from_slice(&cts.to_be_bytes()[1..]);
        b.extend_from_slice(&avcc);
        self.emit(TsTag {
            kind: VIDEO,
            dts_us,
            body: Bytes::from(b),
            seq,
        });
    }

    fn audio_pes(&mut self, h: &PesData<'_>, seq: u64) {
        let st = &mut self.audio_state;
        // Frames that start in this PES take its pts; the end of a frame cut by the previous
        // PES keeps the previous clock.
        let carried = st.carry.len();
        let mut data = std::mem::take(&mut st.carry);
        data.extend_from_slice(h.payload);
        let carry_seq = st.carry_seq;
        let pes_us = h.pts.map(|p| ticks_to_us(self.unwrap(Track::Audio, p)));
        let mut pos = 0;
        let mut in_pes = 0u64; // frames starting in this PES so far
        while pos < data.len() {
            let rest = &data[pos..];
            let hdr = match adts_header(rest) {
                Adts::Frame(h) => h,
                Adts::Short => {
                    if rest.len() < 8192 {
                        let st = &mut self.audio_state;
                        st.carry = rest.to_vec();
                        st.carry_seq = if pos < carried { carry_seq } else { seq };
                    } else {
                        self.stats.adts_skipped_bytes += rest.len() as u64;
                    }
                    break;
                }
                Adts::Bad => {
                    self.stats.adts_skipped_bytes += 1;
                    pos += 1;
                    continue;
                }
            };
            let from_carry = pos < carried;
            let frame = &rest[hdr.header_len..hdr.frame_len];
            let frame_start = pos;
            pos += hdr.frame_len;
            let rate = hdr.sample_rate();
            let st = &mut self.audio_state;
            let dts_us = match (from_carry, pes_us) {
                (false, Some(t)) => {
                    let d = t + (in_pes as i64 * 1024 * 1_000_000) / i64::from(rate);
                    in_pes += 1;
                    d
                }
                _ => match st.next_us {
                    Some(t) => t,
                    None => {
                        self.stats.frames_dropped += 1;
                        continue;
                    }
                },
            };
            let samples = 1024 * (i64::from(hdr.raw_blocks) + 1);
            st.next_us = Some(dts_us + samples * 1_000_000 / i64::from(rate));
            if hdr.raw_blocks > 0 {
                // Several raw data blocks in one ADTS frame cannot be split without decoding.
                self.stats.adts_skipped_bytes += hdr.frame_len as u64;
                continue;
            }
            let tag_seq = if frame_start < carried {
                carry_seq
            } else {
                seq
            };
            let cfg = (hdr.profile + 1, hdr.freq_index, hdr.channels);
            if st.config != Some(cfg) {
                st.config = Some(cfg);
                let asc = [
                    (cfg.0 << 3) | (cfg.1 >> 1),
                    ((cfg.1 & 1) << 7) | (cfg.2 << 3),
                ];
                self.emit(TsTag {
                    kind: AUDIO,
                    dts_us,
                    body: Bytes::copy_from_slice(&[0xaf, 0, asc[0], asc[1]]),
                    seq: tag_seq,
                });
            }
            let mut b = Vec::with_capacity(2 + frame.len());
            b.extend_from_slice(&[0xaf, 1]);
            b.extend_from_slice(frame);
            self.emit(TsTag {
                kind: AUDIO,
                dts_us,
                body: Bytes::from(b),
                seq: tag_seq,
            });
        }
    }

    fn emit(&mut self, t: TsTag) {
        let i = usize::from(t.kind == AUDIO);
        self.queued_bytes += t.body.len();
        self.queues[i].push_back(t);
        self.stalled[i] = false;
        self.drain(false);
    }

    /// Tags out of the queues: held until every announced stream is configured, then merged
    /// in decode order (see the module docs). `all`: the end, everything goes.
    fn drain(&mut self, all: bool) {
        if !self.flowing {
            let configured = (self.video.pid.is_none() || self.avc_record.is_some())
                && (self.audio.pid.is_none() || self.audio_state.config.is_some());
            let held = self.queues[0].len() + self.queues[1].len();
            let span = self
                .queues
                .iter()
                .filter_map(|q| Some(q.back()?.dts_us.saturating_sub(q.front()?.dts_us)))
                .max()
                .unwrap_or(0);
            // Past a bound, a stream that never configured is taken as absent.
            let too_much =
                held > MAX_HELD || self.queued_bytes > MAX_HELD_BYTES || span > MAX_START_WAIT_US;
            if !(configured || all || too_much) {
                return;
            }
            self.flowing = true;
            // Each track's first configuration before any frame.
            for q in &mut self.queues {
                if let Some(i) = q.iter().position(|t| t.body.get(1) == Some(&0))
                    && let Some(t) = q.remove(i)
                {
                    self.queued_bytes = self.queued_bytes.saturating_sub(t.body.len());
                    self.out.push(t);
                }
            }
        }
        let expected = [self.video.pid.is_some(), self.audio.pid.is_some()];
        loop {
            let heads = [
                self.queues[0].front().map(|t| t.dts_us),
                self.queues[1].front().map(|t| t.dts_us),
            ];
            let pick = match heads {
                [Some(v), Some(a)] => usize::from(a < v),
                [None, None] => break,
                [Some(_), None] | [None, Some(_)] => {
                    let i = usize::from(heads[0].is_none());
                    let other = 1 - i;
                    let q = &self.queues[i];
                    let span = q
                        .back()
                        .zip(q.front())
                        .map_or(0, |(b, f)| b.dts_us - f.dts_us);
                    if span > MAX_WAIT_US
                        || q.len() > MAX_HELD
                        || self.queued_bytes > MAX_HELD_BYTES
                    {
                        // The other track is silent: stop waiting for it until it comes back.
                        self.stalled[other] = true;
                    }
                    if !(all || !expected[other] || self.stalled[other]) {
                        break;
                    }
                    i
                }
            };
            if let Some(t) = self.queues[pick].pop_front() {
                self.queued_bytes = self.queued_bytes.saturating_sub(t.body.len());
                self.out.push(t);
            }
        }
    }

    /// The bytes went out of sync: the packet before may have been cut short and filled with
    /// what followed, so the PES it went into cannot be trusted.
    fn lost_sync(&mut self) {
        self.stats.resyncs += 1;
        for track in [Track::Video, Track::Audio] {
            if self.es(track).pes.take().is_some_and(|p| !p.broken) {
                self.stats.pes_dropped += 1;
            }
        }
        self.audio_state.carry.clear();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Track {
    Video,
    Audio,
}

enum Cc {
    Next,
    Duplicate,
    Jump,
}

/// The continuity counter of a packet with payload, against the PID's last one.
fn check_cc(last: &mut Option<u8>, cc: u8, discontinuity: bool) -> Cc {
    let prev = last.replace(cc);
    match prev {
        Some(p) if !discontinuity && p == cc => Cc::Duplicate,
        Some(p) if !discontinuity && (p + 1) & 0x0f != cc => Cc::Jump,
        _ => Cc::Next,
    }
}

/// The first offset at which a run of sync bytes every 188 bytes starts: three of them, or at
/// the end of the stream as many as there are bytes for (at least one whole packet).
fn find_sync(b: &[u8], eof: bool) -> Option<usize> {
    (0..b.len()).find(|&i| {
        if b[i] != SYNC {
            return false;
        }
        if eof {
            i + PACKET <= b.len()
                && (1..3)
                    .map(|k| i + k * PACKET)
                    .take_while(|&o| o < b.len())
                    .all(|o| b[o] == SYNC)
        } else {
            b.get(i + 2 * PACKET) == Some(&SYNC) && b[i + PACKET] == SYNC
        }
    })
}

/// Collect a PSI section across packets; returns it once whole. Only the first section
/// starting in a packet is read (PAT and PMT come one per packet in practice).
fn gather_section(psi: &mut Psi, pusi: bool, payload: &[u8]) -> Option<Vec<u8>> {
    if pusi {
        let pointer = usize::from(*payload.first()?);
        let new = payload.get(1 + pointer..).unwrap_or(&[]);
        psi.section.clear();
        psi.section.extend_from_slice(new);
    } else if psi.section.is_empty() {
        return None; // the rest of a section whose start was not seen
    } else {
        psi.section.extend_from_slice(payload);
    }
    if psi.section.len() < 3 {
        return None;
    }
    let len = 3 + usize::from(u16::from_be_bytes([psi.section[1], psi.section[2]]) & 0x0fff);
    if len > MAX_SECTION {
        psi.section.clear();
        return Some(Vec::new()); // rejected by the parser: counted there
    }
    if psi.section.len() < len {
        return None;
    }
    psi.section.truncate(len);
    Some(std::mem::take(&mut psi.section))
}

/// A long-form section of table `table_id` with a correct CRC: the bytes after its 8-byte
/// header up to the CRC.
fn section_body(s: &[u8], table_id: u8) -> Option<&[u8]> {
    if s.len() < 12 || s[0] != table_id || s[1] & 0x80 == 0 || crc32_mpeg(s) != 0 {
        return None;
    }
    // current_next_indicator: a table not yet in force is ignored.
    if s[5] & 1 == 0 {
        return None;
    }
    s.get(8..s.len() - 4)
}

/// CRC-32/MPEG-2 (poly 0x04C11DB7, not reflected, init all ones); 0 over a section with its
/// CRC.
pub(crate) fn crc32_mpeg(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04c1_1db7
            } else {
                crc << 1
            };
        }
    }
    crc
}

struct PesData<'a> {
    pts: Option<u64>,
    dts: Option<u64>,
    payload: &'a [u8],
}

/// A PES packet's timestamps and payload; None when it is not one.
fn parse_pes(d: &[u8], expected: Option<usize>) -> Option<PesData<'_>> {
    let d = match expected {
        Some(n) => d.get(..n)?,
        None => d,
    };
    if d.len() < 9 || d[..3] != [0, 0, 1] || d[6] & 0xc0 != 0x80 {
        return None;
    }
    let flags = d[7] >> 6;
    let header_len = usize::from(d[8]);
    let payload = d.get(9 + header_len..)?;
    let ts = |o: usize| -> Option<u64> {
        let b = d.get(o..o + 5)?;
        if b[0] & 1 == 0 || b[2] & 1 == 0 || b[4] & 1 == 0 {
            return None; // marker bits
        }
        Some(
            (u64::from(b[0] >> 1 & 7) << 30)
                | (u64::from(b[1]) << 22)
                | (u64::from(b[2] >> 1) << 15)
                | (u64::from(b[3]) << 7)
                | u64::from(b[4] >> 1),
        )
    };
    let (pts, dts) = match flags {
        2 if header_len >= 5 => (ts(9), None),
        3 if header_len >= 10 => (ts(9), ts(14)),
        _ => (None, None),
    };
    Some(PesData { pts, dts, payload })
}

/// A signed difference of two 33-bit timestamps (the shorter way round).
fn signed33(d: u64) -> i64 {
    let d = (d & (WRAP as u64 - 1)) as i64;
    if d >= WRAP / 2 { d - WRAP } else { d }
}

fn ticks_to_us(t: i64) -> i64 {
    (t * 100).div_euclid(9)
}

struct AdtsHeader {
    profile: u8,
    freq_index: u8,
    channels: u8,
    header_len: usize,
    frame_len: usize,
    raw_blocks: u8,
}

impl AdtsHeader {
    fn sample_rate(&self) -> u32 {
        const RATES: [u32; 13] = [
            96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
        ];
        RATES[usize::from(self.freq_index)]
    }
}

enum Adts {
    Frame(AdtsHeader),
    /// Looks like a frame that goes on past the data.
    Short,
    Bad,
}

fn adts_header(b: &[u8]) -> Adts {
    if b.len() < 2 {
        return if b.first().is_none_or(|&x| x == 0xff) {
            Adts::Short
        } else {
            Adts::Bad
        };
    }
    // Syncword 0xFFF, layer 0.
    if b[0] != 0xff || b[1] & 0xf6 != 0xf0 {
        return Adts::Bad;
    }
    if b.len() < 7 {
        return Adts::Short;
    }
    let protection_absent = b[1] & 1 == 1;
    let profile = b[2] >> 6;
    let freq_index = (b[2] >> 2) & 0x0f;
    let channels = ((b[2] & 1) << 2) | (b[3] >> 6);
    let frame_len =
        (usize::from(b[3] & 3) << 11) | (usize::from(b[4]) << 3) | usize::from(b[5] >> 5);
    let raw_blocks = b[6] & 3;
    let header_len = if protection_absent { 7 } else { 9 };
    if freq_index > 12 || profile == 3 || frame_len <= header_len {
        return Adts::Bad;
    }
    if b.len() < frame_len {
        return Adts::Short;
    }
    Adts::Frame(AdtsHeader {
        profile,
        freq_index,
        channels,
        header_len,
        frame_len,
        raw_blocks,
    })
}
