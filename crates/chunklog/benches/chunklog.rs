//! Append throughput of 4 KiB chunks under each fsync policy (on this machine's disk, in a temp
//! directory), and a tail read of a 64 MiB log.

use std::time::Duration;

use bytes::Bytes;
use chunklog::{FsyncPolicy, LogConfig, Record, StreamLog};
use divan::{Bencher, counter::BytesCount};

fn main() {
    divan::main();
}

const CHUNK: usize = 4096;

fn open(dir: &std::path::Path, fsync: FsyncPolicy) -> StreamLog {
    let mut cfg = LogConfig::new(dir);
    cfg.fsync = fsync;
    StreamLog::open(&cfg, "bench").expect("open")
}

fn bench_append(bencher: Bencher, fsync: FsyncPolicy) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut log = open(tmp.path(), fsync);
    let payload = Bytes::from(vec![0x5au8; CHUNK]);
    bencher.counter(BytesCount::new(CHUNK)).bench_local(|| {
        let seq = log.next_seq();
        log.append(&Record {
            seq,
            pts: seq as i64 * 33_000,
            flags: 0,
            payload: payload.clone(),
        })
        .expect("append")
    });
}

#[divan::bench(sample_count = 20, sample_size = 500)]
fn append_4k_never(bencher: Bencher) {
    bench_append(bencher, FsyncPolicy::Never);
}

#[divan::bench(sample_count = 20, sample_size = 500)]
fn append_4k_interval(bencher: Bencher) {
    // sync() is the caller's, not measured here: this is the append cost under Interval.
    bench_append(bencher, FsyncPolicy::Interval(Duration::from_millis(100)));
}

#[divan::bench(sample_count = 10, sample_size = 20)]
fn append_4k_always(bencher: Bencher) {
    bench_append(bencher, FsyncPolicy::Always);
}

#[divan::bench(sample_count = 20, sample_size = 50)]
fn read_last_10_of_64mib(bencher: Bencher) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut log = open(tmp.path(), FsyncPolicy::Never);
    let payload = Bytes::from(vec![1u8; CHUNK]);
    let n = (64u64 << 20) / CHUNK as u64;
    for seq in 0..n {
        log.append(&Record {
            seq,
            pts: seq as i64,
            flags: 0,
            payload: payload.clone(),
        })
        .expect("append");
    }
    let reader = log.reader();
    bencher.bench_local(|| reader.read(n - 10, 10, usize::MAX).expect("read"));
}
