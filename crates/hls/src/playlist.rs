//! Media playlists from a [`Packager`]: LL-HLS (parts, preload hint, server control) and plain
//! HLS (segments only) from the same segments.
//!
//! Written by hand: `m3u8-rs` has no LL-HLS tags. Checked against RFC 8216 and
//! draft-pantos-hls-rfc8216bis (§4.4.3.7 PART-INF, §4.4.3.8 SERVER-CONTROL: PART-HOLD-BACK
//! ≥ 2·PT (we use 3·PT), HOLD-BACK ≥ 3·TD; §4.4.4.9 PART; §4.4.5.3 PRELOAD-HINT; §6.2.2: the
//! playlist lasts at least three Target Durations, EXT-X-PART tags only within the last three
//! Target Durations; version 6 for EXT-X-MAP).

use crate::packager::{Packager, Segment, init_name};
use std::fmt::Write;

/// Which playlist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// Low-latency: parts, preload hint, blocking reload.
    LowLatency,
    /// Segments only, for players without LL-HLS.
    Classic,
}

fn secs(us: i64) -> String {
    format!("{:.5}", us.max(0) as f64 / 1e6)
}

/// `YYYY-MM-DDThh:mm:ss.sssZ` of a Unix time in ms.
pub fn iso8601(unix_ms: i64) -> String {
    let days = unix_ms.div_euclid(86_400_000);
    let ms = unix_ms.rem_euclid(86_400_000);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// Render the playlist. `uri` turns a resource name (`init-….mp4`, `12.m4s`, `12.3.m4s`) into the
/// URI written (a prefix, a token query). `None` before the first part.
pub fn render(p: &Packager, flavor: Flavor, uri: &dyn Fn(&str) -> String) -> Option<String> {
    if !p.has_media() {
        return None;
    }
    let cfg = p.config();
    let td = cfg.target_duration_s();
    let td_us = td as i64 * 1_000_000;
    let ll = flavor == Flavor::LowLatency;
    let all = p.segments();
    // The last `window` segments, more if they do not last three Target Durations.
    let mut first = all.len().saturating_sub(cfg.window.max(1));
    let listed_us = |from: usize| all.iter().skip(from).map(|s| s.duration_us).sum::<i64>();
    while first > 0 && listed_us(first) < 3 * td_us {
        first -= 1;
    }
    let listed: Vec<&Segment> = all.iter().skip(first).collect();
    let open = if ll { p.open() } else { None };
    let end_us = open
        .and_then(|o| o.parts.last().map(|x| x.start_us + x.duration_us))
        .or(listed.last().map(|s| s.start_us + s.duration_us))
        .unwrap_or(0);
    let first_msn = listed
        .first()
        .map(|s| s.msn)
        .or(open.map(|o| o.msn))
        .unwrap_or(0);
    let dsn = p.discontinuities_dropped()
        + all.iter().take(first).filter(|s| s.discontinuity).count() as u64;

    let mut out = String::with_capacity(2048);
    out.push_str("#EXTM3U\n#EXT-X-VERSION:6\n");
    let _ = writeln!(out, "#EXT-X-TARGETDURATION:{td}");
    if ll {
        let _ = writeln!(
            out,
            "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={},HOLD-BACK={}",
            secs(3 * i64::from(cfg.part_ms) * 1000),
            secs(3 * td_us)
        );
        let _ = writeln!(
            out,
            "#EXT-X-PART-INF:PART-TARGET={}",
            secs(i64::from(cfg.part_ms) * 1000)
        );
    }
    let _ = writeln!(out, "#EXT-X-MEDIA-SEQUENCE:{first_msn}");
    if dsn > 0 {
        let _ = writeln!(out, "#EXT-X-DISCONTINUITY-SEQUENCE:{dsn}");
    }
    let mut map: Option<u32> = None;
    let mut head = |out: &mut String, init: u32, disc: bool, pdt: i64, gap: bool| {
        if disc && map.is_some() {
            out.push_str("#EXT-X-DISCONTINUITY\n");
        }
        if map != Some(init) && !gap {
            let _ = writeln!(out, "#EXT-X-MAP:URI=\"{}\"", uri(&init_name(init)));
            map = Some(init);
        }
        let _ = writeln!(out, "#EXT-X-PROGRAM-DATE-TIME:{}", iso8601(pdt));
    };
    for s in &listed {
        head(&mut out, s.init, s.discontinuity, s.pdt_ms, s.gap);
        // EXT-X-PART tags only within three Target Durations of the end (§6.2.2).
        if ll {
            for part in &s.parts {
                if part.start_us + part.duration_us >= end_us - 3 * td_us {
                    part_line(&mut out, s.msn, part, uri);
                }
            }
        }
        if s.gap {
            out.push_str("#EXT-X-GAP\n");
        }
        let _ = writeln!(out, "#EXTINF:{},", secs(s.duration_us));
        if s.gap {
            out.push_str(&uri(&format!("{}.gap.m4s", s.msn)));
        } else {
            out.push_str(&uri(&format!("{}.m4s", s.msn)));
        }
        out.push('\n');
    }
    if let Some(o) = open {
        if !o.parts.is_empty() {
            head(&mut out, o.init, o.discontinuity, o.pdt_ms, false);
        }
        for part in &o.parts {
            part_line(&mut out, o.msn, part, uri);
        }
        if !p.is_ended() {
            let _ = writeln!(
                out,
                "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{}\"",
                uri(&format!("{}.{}.m4s", o.msn, o.parts.len()))
            );
        }
    }
    if p.is_ended() {
        out.push_str("#EXT-X-ENDLIST\n");
    }
    Some(out)
}

fn part_line(
    out: &mut String,
    msn: u64,
    part: &crate::packager::Part,
    uri: &dyn Fn(&str) -> String,
) {
    let _ = writeln!(
        out,
        "#EXT-X-PART:DURATION={},URI=\"{}\"{}",
        secs(part.duration_us),
        uri(&format!("{msn}.{}.m4s", part.index)),
        if part.independent {
            ",INDEPENDENT=YES"
        } else {
            ""
        }
    );
}

/// A resource named in a playlist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    Init(u32),
    Segment(u64),
    Part(u64, u32),
    Gap(u64),
}

/// Parse a resource name (`init-0a1b2c3d.mp4`, `12.m4s`, `12.3.m4s`, `12.gap.m4s`).
pub fn parse_resource(name: &str) -> Option<Resource> {
    if let Some(hex) = name
        .strip_prefix("init-")
        .and_then(|n| n.strip_suffix(".mp4"))
    {
        if hex.len() != 8 {
            return None;
        }
        return u32::from_str_radix(hex, 16).ok().map(Resource::Init);
    }
    let stem = name.strip_suffix(".m4s")?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit());
    match stem.split_once('.') {
        None if digits(stem) => stem.parse().ok().map(Resource::Segment),
        Some((m, "gap")) if digits(m) => m.parse().ok().map(Resource::Gap),
        Some((m, p)) if digits(m) && digits(p) && p.len() <= 9 => {
            Some(Resource::Part(m.parse().ok()?, p.parse().ok()?))
        }
        _ => None,
    }
}
