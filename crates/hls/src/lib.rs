//! # hls — LL-HLS and HLS packaging of FLV-tag streams (pure)
//!
//! **What.** Everything between "a chunk holding an FLV tag" and "an HTTP response body" for
//! HTTP Live Streaming, with no I/O: [`ts`] turns an MPEG-TS byte stream (a broadcast pushed as
//! TS) into such tags; [`codec`] reads FLV tag bodies (AVC/HEVC, AAC; legacy and enhanced RTMP)
//! into codec configurations and frames; [`fmp4`] builds CMAF init segments and fragments (with
//! `mp4-atom`); [`packager`] cuts frames into segments and parts whose numbers are the same on
//! every node and keeps a bounded window of them; [`playlist`] renders the LL-HLS and the plain
//! playlists and parses resource names.
//!
//! **Why pure.** The entry server feeds it from a stream cursor and serves what it renders; the
//! rules (where a segment starts, how a blocking reload is answered) are tested here on made-up
//! frames, deterministically.
//!
//! **What not.** Not a transcoder (payloads pass through untouched; MPEG-TS is demuxed, not
//! re-encoded), no multivariant playlists (one rendition per broadcast), no encryption.

pub mod codec;
pub mod fmp4;
pub mod packager;
pub mod playlist;
pub mod ts;

pub use packager::{Config, Lookup, Packager, Reload};
pub use playlist::{Flavor, Resource, parse_resource, render};
pub use ts::{TsDemuxer, TsStats, TsTag};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod ts_tests;
