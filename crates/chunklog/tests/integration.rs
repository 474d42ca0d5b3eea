//! chunklog integration tests: round trips, crash recovery at every byte, retention, concurrent
//! reads, and a model-based proptest.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use chunklog::{AppendOutcome, FsyncPolicy, LogConfig, LogError, Record, StreamLog};
use proptest::prelude::*;

fn cfg(dir: &Path, segment_bytes: u64, fsync: FsyncPolicy) -> LogConfig {
    LogConfig {
        dir: dir.to_owned(),
        fsync,
        segment_bytes,
        retention_age: None,
        retention_bytes: None,
    }
}

/// A deterministic record: payload length and bytes vary with `seq`.
fn rec(seq: u64) -> Record {
    let len = (seq * 37 % 61) as usize + 5;
    let payload: Vec<u8> = (0..len).map(|i| (seq as usize * 31 + i) as u8).collect();
    Record {
        seq,
        pts: seq as i64 * 40_000 - 80_000,
        flags: (seq % 3) as u8,
        payload: Bytes::from(payload),
    }
}

fn append_all(log: &mut StreamLog, range: std::ops::Range<u64>) {
    for s in range {
        assert_eq!(log.append(&rec(s)).unwrap(), AppendOutcome::Appended);
    }
}

fn read_all(log: &StreamLog) -> Vec<Record> {
    log.read(log.first_seq(), usize::MAX, usize::MAX).unwrap()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.is_file()
                && p.extension().is_some_and(|e| e == "seg")
                && p.file_name().is_some_and(|n| n.len() == 24)
        })
        .collect();
    v.sort();
    v
}

fn at_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn round_trip_across_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path(), 400, FsyncPolicy::Never);
    let mut log = StreamLog::open(&c, "cam-1").unwrap();
    assert_eq!((log.next_seq(), log.first_seq()), (0, 0));
    assert_eq!(log.durable_through(), None);
    assert!(log.recovery().is_clean());
    append_all(&mut log, 0..50);
    assert_eq!(log.next_seq(), 50);
    assert_eq!(log.durable_through(), Some(49));
    let segs = segments(&tmp.path().join("cam-1"));
    assert!(
        segs.len() > 5,
        "expected several segments, got {}",
        segs.len()
    );
    assert_eq!(
        segs[0].file_name().unwrap().to_str().unwrap(),
        "00000000000000000000.seg"
    );
    let disk: u64 = segs.iter().map(|p| fs::metadata(p).unwrap().len()).sum();
    assert_eq!(log.total_bytes(), disk);
    let all = read_all(&log);
    assert_eq!(all, (0..50).map(rec).collect::<Vec<_>>());
    // From the middle of a segment, with limits.
    let part = log.read(17, 5, usize::MAX).unwrap();
    assert_eq!(part, (17..22).map(rec).collect::<Vec<_>>());
    assert!(log.read(50, 10, 1000).unwrap().is_empty());
    assert!(log.read(17, 0, 1000).unwrap().is_empty());
}

#[test]
fn read_respects_max_bytes_but_returns_at_least_one() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path(), 1 << 20, FsyncPolicy::Never);
    let mut log = StreamLog::open(&c, "s").unwrap();
    append_all(&mut log, 0..10);
    let one = log.read(3, 10, 1).unwrap();
    assert_eq!(one, vec![rec(3)]);
    let budget = rec(3).payload.len() + rec(4).payload.len();
    assert_eq!(log.read(3, 10, budget).unwrap(), vec![rec(3), rec(4)]);
}

#[test]
fn duplicates_ignored_and_gaps_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path(), 1 << 20, FsyncPolicy::Always);
    let mut log = StreamLog::open(&c, "s").unwrap();
    append_all(&mut log, 0..5);
    let before = log.total_bytes();
    assert_eq!(log.append(&rec(2)).unwrap(), AppendOutcome::Duplicate);
    assert_eq!(log.append(&rec(4)).unwrap(), AppendOutcome::Duplicate);
    assert_eq!(log.total_bytes(), before);
    match log.append(&rec(7)) {
        Err(LogError::Gap {
            expected: 5,
            got: 7,
        }) => {}
        other => panic!("expected a gap error, got {other:?}"),
    }
    assert_eq!(log.append(&rec(5)).unwrap(), AppendOutcome::Appended);
    assert_eq!(log.durable_through(), Some(5));
    assert_eq!(read_all(&log), (0..6).map(rec).collect::<Vec<_>>());
}

#[test]
fn end_then_append_rejected_and_reopen_restores_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = cfg(
        tmp.path(),
        300,
        FsyncPolicy::Interval(Duration::from_millis(50)),
    );
    c.retention_bytes = Some(1000);
    let mut log = StreamLog::open(&c, "live.main_1").unwrap();
    append_all(&mut log, 0..40);
    log.sync().unwrap();
    let report = log.enforce_retention(SystemTime::now()).unwrap();
    assert!(!report.removed.is_empty());
    let first = log.first_seq();
    assert!(first > 0);
    match log.end(10) {
        Err(LogError::EndMismatch {
            final_seq: 10,
            next_seq: 40,
        }) => {}
        other => panic!("expected EndMismatch, got {other:?}"),
    }
    log.end(39).unwrap();
    assert_eq!(log.ended(), Some(39));
    log.end(39).unwrap(); // idempotent
    assert!(matches!(
        log.end(38),
        Err(LogError::Ended { final_seq: 39 })
    ));
    assert!(matches!(
        log.append(&rec(40)),
        Err(LogError::Ended { final_seq: 39 })
    ));
    // A resend of old data after END is still just a duplicate.
    assert_eq!(log.append(&rec(39)).unwrap(), AppendOutcome::Duplicate);
    let content = read_all(&log);
    drop(log);

    let log = StreamLog::open(&c, "live.main_1").unwrap();
    assert!(log.recovery().is_clean(), "{:?}", log.recovery());
    assert_eq!(log.next_seq(), 40);
    assert_eq!(log.first_seq(), first);
    assert_eq!(log.ended(), Some(39));
    assert_eq!(log.durable_through(), Some(39));
    assert_eq!(read_all(&log), content);
    assert_eq!(content, (first..40).map(rec).collect::<Vec<_>>());
}

#[test]
fn a_detached_sync_covers_what_was_written_before_it_began() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(
        tmp.path(),
        300,
        FsyncPolicy::Interval(Duration::from_millis(100)),
    );
    let mut log = StreamLog::open(&c, "s").unwrap();
    assert!(log.begin_sync().unwrap().is_none(), "nothing to sync yet");
    append_all(&mut log, 0..10); // rolls segments: sealed ones are pending too
    let job = log.begin_sync().unwrap().expect("unsynced data");
    assert!(!log.needs_sync(), "the job took everything unsynced");
    // Appends go on while the job runs elsewhere.
    let runner = std::thread::spawn(move || job.run());
    append_all(&mut log, 10..14);
    let result = runner.join().unwrap();
    assert_eq!(result.as_ref().ok(), Some(&Some(9)));
    assert_eq!(
        log.durable_through(),
        None,
        "not durable before finish_sync"
    );
    log.finish_sync(result).unwrap();
    assert_eq!(log.durable_through(), Some(9), "only what the job covered");
    assert!(log.needs_sync(), "10..14 still to sync");
    let job = log.begin_sync().unwrap().unwrap();
    log.finish_sync(job.run()).unwrap();
    assert_eq!(log.durable_through(), Some(13));
    // A failed job poisons the log: after a failed fsync nothing written can be trusted.
    append_all(&mut log, 14..15);
    let job = log.begin_sync().unwrap().unwrap();
    drop(job);
    let err = chunklog::LogError::Poisoned {
        stream: "s".into(),
        cause: "test".into(),
    };
    assert!(log.finish_sync(Err(err)).is_err());
    assert!(log.append(&rec(15)).is_err(), "poisoned");
    drop(log);
    // What was synced is all there after a reopen.
    let log = StreamLog::open(&c, "s").unwrap();
    assert_eq!(read_all(&log).len(), 15);
}

#[test]
fn end_of_an_empty_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path(), 1 << 20, FsyncPolicy::Never);
    let mut log = StreamLog::open(&c, "empty").unwrap();
    assert!(matches!(log.end(0), Err(LogError::EndMismatch { .. })));
    log.end(u64::MAX).unwrap();
    drop(log);
    let mut log = StreamLog::open(&c, "empty").unwrap();
    assert_eq!(log.ended(), Some(u64::MAX));
    assert_eq!(log.next_seq(), 0);
    assert!(matches!(log.append(&rec(0)), Err(LogError::Ended { .. })));
}

#[test]
fn interval_policy_acks_only_after_sync() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(
        tmp.path(),
        300,
        FsyncPolicy::Interval(Duration::from_millis(100)),
    );
    let mut log = StreamLog::open(&c, "s").unwrap();
    assert!(!log.needs_sync());
    append_all(&mut log, 0..10); // rolls segments too
    assert_eq!(log.durable_through(), None);
    assert!(log.needs_sync());
    log.sync().unwrap();
    assert!(!log.needs_sync());
    assert_eq!(log.durable_through(), Some(9));
    append_all(&mut log, 10..12);
    assert_eq!(log.durable_through(), Some(9));
    log.sync().unwrap();
    assert_eq!(log.durable_through(), Some(11));
    // Never: durable at once, never needs a sync.
    let c = cfg(tmp.path(), 300, FsyncPolicy::Never);
    let mut log = StreamLog::open(&c, "t").unwrap();
    append_all(&mut log, 0..3);
    assert_eq!(log.durable_through(), Some(2));
    assert!(!log.needs_sync());
}

#[test]
fn torn_or_corrupt_last_record_at_every_byte_is_recovered() {
    let tmp = tempfile::tempdir().unwrap();
    let pristine = tmp.path().join("pristine");
    let c = cfg(&pristine, 500, FsyncPolicy::Never);
    let n = 30u64;
    let mut log = StreamLog::open(&c, "s").unwrap();
    append_all(&mut log, 0..n);
    drop(log);
    let src = pristine.join("s");
    let last = segments(&src).pop().unwrap();
    let last_name = last.file_name().unwrap().to_owned();
    let bytes = fs::read(&last).unwrap();
    let rec_size = 34 + rec(n - 1).payload.len();
    let rec_start = bytes.len() - rec_size;

    for (i, at) in (rec_start..bytes.len()).enumerate() {
        for corrupt in [false, true] {
            let root = tmp.path().join(format!("case-{i}-{corrupt}"));
            let dir = root.join("s");
            copy_dir(&src, &dir);
            let f = dir.join(&last_name);
            if corrupt {
                let mut b = bytes.clone();
                b[at] ^= 0x5a;
                fs::write(&f, b).unwrap();
            } else {
                fs::write(&f, &bytes[..at]).unwrap();
            }
            let c = cfg(&root, 500, FsyncPolicy::Always);
            let mut log = StreamLog::open(&c, "s").unwrap();
            assert_eq!(
                log.next_seq(),
                n - 1,
                "cut/corrupt at byte {at} ({corrupt})"
            );
            let t = &log.recovery().truncated;
            if at == rec_start && !corrupt {
                // Cut exactly at a record boundary: a clean log one record shorter.
                assert!(t.is_empty(), "{t:?}");
            } else {
                assert_eq!(t.len(), 1, "{t:?}");
                assert_eq!(t[0].offset, rec_start as u64);
            }
            assert_eq!(read_all(&log), (0..n - 1).map(rec).collect::<Vec<_>>());
            assert_eq!(fs::metadata(&f).unwrap().len(), rec_start as u64);
            append_all(&mut log, n - 1..n + 2);
            drop(log);
            let log = StreamLog::open(&c, "s").unwrap();
            assert!(log.recovery().is_clean());
            assert_eq!(read_all(&log), (0..n + 2).map(rec).collect::<Vec<_>>());
            drop(log);
            fs::remove_dir_all(&root).unwrap();
        }
    }
}

#[test]
fn corrupt_record_in_the_middle_of_the_last_segment_truncates_from_there() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path(), 1 << 20, FsyncPolicy::Always);
    let mut log = StreamLog::open(&c, "s").unwrap();
    append_all(&mut log, 0..20);
    drop(log);
    let seg = segments(&tmp.path().join("s")).pop().unwrap();
    let mut b = fs::read(&seg).unwrap();
    // Offset of record 12: header + sizes of records 0..12.
    let off: usize = 28 + (0..12).map(|s| 34 + rec(s).payload.len()).sum::<usize>();
    b[off + 40] ^= 1; // a payload byte
    fs::write(&seg, &b).unwrap();

    let mut log = StreamLog::open(&c, "s").unwrap();
    let r = log.recovery();
    assert_eq!(r.truncated.len(), 1);
    assert_eq!(r.truncated[0].offset, off as u64);
    assert_eq!(r.truncated[0].reason, "record CRC mismatch");
    assert_eq!(r.truncated[0].dropped_bytes, (b.len() - off) as u64);
    assert_eq!(log.next_seq(), 12);
    append_all(&mut log, 12..25);
    assert_eq!(read_all(&log), (0..25).map(rec).collect::<Vec<_>>());
}

#[test]
fn garbage_files_and_bad_headers_do_not_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path(), 300, FsyncPolicy::Always);
    let mut log = StreamLog::open(&c, "s").unwrap();
    append_all(&mut log, 0..20);
    drop(log);
    let dir = tmp.path().join("s");
    fs::write(dir.join("notes.txt"), b"hello").unwrap();
    fs::write(dir.join("123.seg"), b"not a segment name").unwrap();
    fs::create_dir(dir.join("00000000000000000999.seg")).unwrap();
    // The last segment's header is garbage: reset to an empty segment at its name's seq.
    let last = segments(&dir).pop().unwrap();
    let name_seq: u64 = last.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    fs::write(&last, vec![0xAB; 100]).unwrap();

    let mut log = StreamLog::open(&c, "s").unwrap();
    let r = log.recovery().clone();
    assert_eq!(r.ignored.len(), 3, "{r:?}");
    assert_eq!(r.truncated.len(), 1, "{r:?}");
    assert_eq!(r.truncated[0].offset, 0);
    assert_eq!(log.next_seq(), name_seq);
    append_all(&mut log, name_seq..25);
    assert_eq!(read_all(&log), (0..25).map(rec).collect::<Vec<_>>());
    drop(log);

    // An empty (zero-length) last segment file, as a crash during creation leaves it.
    let log = StreamLog::open(&c, "s").unwrap();
    let next = log.next_seq();
    drop(log);
    fs::write(dir.join(format!("{next:020}.seg")), b"").unwrap();
    let log = StreamLog::open(&c, "s").unwrap();
    assert_eq!(log.next_seq(), next);
    assert_eq!(read_all(&log), (0..25).map(rec).collect::<Vec<_>>());
}

#[test]
fn hole_in_the_middle_keeps_the_newest_run_and_orphans_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path(), 300, FsyncPolicy::Never);
    let mut log = StreamLog::open(&c, "s").unwrap();
    append_all(&mut log, 0..40);
    drop(log);
    let dir = tmp.path().join("s");
    let segs = segments(&dir);
    assert!(segs.len() >= 4);
    fs::remove_file(&segs[2]).unwrap();
    let third: u64 = segs[3]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();

    let mut log = StreamLog::open(&c, "s").unwrap();
    assert_eq!(log.recovery().orphaned.len(), 2, "{:?}", log.recovery());
    assert_eq!(log.first_seq(), third);
    assert_eq!(log.next_seq(), 40);
    assert!(matches!(
        log.read(0, 10, 1000),
        Err(LogError::Trimmed { first_seq }) if first_seq == third
    ));
    append_all(&mut log, 40..42);
    assert_eq!(read_all(&log), (third..42).map(rec).collect::<Vec<_>>());
    // The orphans are still on disk, and are not picked up again.
    assert!(
        dir.join(format!(
            "{}.orphan",
            segs[0].file_name().unwrap().to_str().unwrap()
        ))
        .exists()
    );
    drop(log);
    let log = StreamLog::open(&c, "s").unwrap();
    assert!(log.recovery().is_clean(), "{:?}", log.recovery());
}

#[test]
fn retention_by_size() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = cfg(tmp.path(), 500, FsyncPolicy::Never);
    c.retention_bytes = Some(1500);
    let mut log = StreamLog::open(&c, "s").unwrap();
    append_all(&mut log, 0..100);
    let before = segments(&tmp.path().join("s")).len();
    let r = log.enforce_retention(SystemTime::now()).unwrap();
    let after = segments(&tmp.path().join("s"));
    assert_eq!(after.len(), before - r.removed.len());
    assert!(log.total_bytes() <= 1500, "{}", log.total_bytes());
    assert!(log.total_bytes() + 500 > 1500, "deleted more than needed");
    let first = log.first_seq();
    assert_eq!(r.first_seq, first);
    assert_eq!(
        after[0].file_name().unwrap().to_str().unwrap(),
        format!("{first:020}.seg")
    );
    assert!(
        matches!(log.read(0, 1, 100), Err(LogError::Trimmed { first_seq }) if first_seq == first)
    );
    assert_eq!(read_all(&log), (first..100).map(rec).collect::<Vec<_>>());
    // The active segment is never deleted, even over the limit.
    c.retention_bytes = Some(0);
    drop(log);
    let mut log = StreamLog::open(&c, "s").unwrap();
    log.enforce_retention(SystemTime::now()).unwrap();
    assert_eq!(segments(&tmp.path().join("s")).len(), 1);
    assert_eq!(log.next_seq(), 100);
    assert_eq!(log.read(99, 5, 1 << 20).unwrap(), vec![rec(99)]);
}

#[test]
fn retention_by_age_uses_each_segments_last_write() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = cfg(tmp.path(), 400, FsyncPolicy::Never);
    c.retention_age = Some(Duration::from_secs(60));
    let mut log = StreamLog::open(&c, "s").unwrap();
    // Record s is written at t = s seconds.
    for s in 0..60 {
        log.append_at(&rec(s), at_ms(1_000_000 + s * 1000)).unwrap();
    }
    let segs = segments(&tmp.path().join("s"));
    assert!(segs.len() > 4);
    // At t = 30 s + 60 s, segments whose last record is at t <= 30 s are old enough.
    let r = log.enforce_retention(at_ms(1_000_000 + 90_000)).unwrap();
    assert!(!r.removed.is_empty());
    let first = log.first_seq();
    // The last deleted segment ended at or before seq 30, the first kept one after it.
    assert!(first <= 31, "first {first}");
    let survivors = read_all(&log);
    assert_eq!(survivors[0].seq, first);
    // The first surviving segment's last record is younger than 60 s at t = 90 s.
    let kept_first_seg_end = {
        let next_seg = segments(&tmp.path().join("s"))[1].clone();
        next_seg
            .file_stem()
            .unwrap()
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            - 1
    };
    assert!(kept_first_seg_end > 30, "{kept_first_seg_end}");
    // Nothing more to do at the same time; everything but the active one a day later.
    assert!(
        log.enforce_retention(at_ms(1_090_000))
            .unwrap()
            .removed
            .is_empty()
    );
    log.enforce_retention(at_ms(1_000_000 + 86_400_000))
        .unwrap();
    assert_eq!(segments(&tmp.path().join("s")).len(), 1);
    // Ages survive a reopen (they are in the records).
    drop(log);
    let log = StreamLog::open(&c, "s").unwrap();
    assert_eq!(log.next_seq(), 60);
}

#[test]
fn read_while_appending_from_another_thread() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = cfg(tmp.path(), 4000, FsyncPolicy::Never);
    c.retention_bytes = None;
    let mut log = StreamLog::open(&c, "s").unwrap();
    let reader = log.reader();
    let total = 3000u64;
    let handle = std::thread::spawn(move || {
        let mut next = 0u64;
        let mut polls = 0u64;
        while next < total {
            let got = reader.read(next, 64, 1 << 20).unwrap();
            for r in &got {
                assert_eq!(*r, rec(next));
                next += 1;
            }
            polls += 1;
            if got.is_empty() {
                std::thread::yield_now();
            }
        }
        polls
    });
    for s in 0..total {
        log.append(&rec(s)).unwrap();
    }
    let polls = handle.join().unwrap();
    assert!(polls > 0);
    // A second open while the first is alive is refused.
    assert!(matches!(
        StreamLog::open(&c, "s"),
        Err(LogError::Locked { .. })
    ));
}

#[test]
fn reader_and_retention_race_gives_trimmed_not_garbage() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = cfg(tmp.path(), 600, FsyncPolicy::Never);
    c.retention_bytes = Some(3000);
    let mut log = StreamLog::open(&c, "s").unwrap();
    let reader = log.reader();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let h = std::thread::spawn(move || {
        let mut trimmed = 0;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            match reader.read(reader.first_seq(), 100, 1 << 20) {
                Ok(rs) => {
                    for w in rs.windows(2) {
                        assert_eq!(w[0].seq + 1, w[1].seq);
                    }
                    for r in rs {
                        assert_eq!(r, rec(r.seq));
                    }
                }
                Err(LogError::Trimmed { .. }) => trimmed += 1,
                Err(e) => panic!("{e}"),
            }
        }
        trimmed
    });
    for s in 0..2000 {
        log.append(&rec(s)).unwrap();
        if s % 10 == 0 {
            log.enforce_retention(SystemTime::now()).unwrap();
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    h.join().unwrap();
}

#[test]
fn seek_time_finds_the_first_record_at_or_after() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path(), 300, FsyncPolicy::Never);
    let mut log = StreamLog::open(&c, "s").unwrap();
    assert_eq!(log.seek_time(0), None);
    append_all(&mut log, 0..50); // pts = seq * 40_000 - 80_000
    assert_eq!(log.seek_time(i64::MIN), Some(0));
    assert_eq!(log.seek_time(-80_000), Some(0));
    assert_eq!(log.seek_time(-79_999), Some(1));
    assert_eq!(log.seek_time(0), Some(2));
    assert_eq!(log.seek_time(1_000_000), Some(27));
    assert_eq!(log.seek_time(1_000_001), Some(28));
    assert_eq!(log.seek_time(49 * 40_000 - 80_000), Some(49));
    assert_eq!(log.seek_time(49 * 40_000), None);
    // Survives a reopen; out-of-order pts are handled too.
    drop(log);
    let mut log = StreamLog::open(&c, "s").unwrap();
    assert_eq!(log.seek_time(1_000_000), Some(27));
    let mut r = rec(50);
    r.pts = 0; // goes back in time
    log.append(&r).unwrap();
    let mut r = rec(51);
    r.pts = 5_000_000;
    log.append(&r).unwrap();
    assert_eq!(log.seek_time(4_000_000), Some(51));
    assert_eq!(log.reader().seek_time(0), Some(2));
}

#[test]
fn tail_read_of_a_big_log_uses_the_index() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path(), 8 << 20, FsyncPolicy::Never);
    let mut log = StreamLog::open(&c, "big").unwrap();
    let payload = Bytes::from(vec![7u8; 4000]);
    let n = 8000u64; // ~32 MB over 4 segments
    for seq in 0..n {
        log.append(&Record {
            seq,
            pts: seq as i64,
            flags: 0,
            payload: payload.clone(),
        })
        .unwrap();
    }
    assert!(log.total_bytes() > 30 << 20);
    let reader = log.reader();
    let before = reader.disk_bytes_read();
    let tail = reader.read(n - 10, 10, usize::MAX).unwrap();
    assert_eq!(tail.len(), 10);
    assert_eq!(tail[0].seq, n - 10);
    let read = reader.disk_bytes_read() - before;
    assert!(
        read < 200 << 10,
        "read {read} bytes for the last 10 records"
    );
}

#[test]
fn stream_names_are_validated_and_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(&tmp.path().join("logs"), 1 << 20, FsyncPolicy::Never);
    assert_eq!(StreamLog::list(&c).unwrap(), Vec::<String>::new());
    let too_long = "a".repeat(129);
    for bad in [
        "",
        ".",
        "..",
        ".hidden",
        "a/b",
        "a b",
        "é",
        "../x",
        too_long.as_str(),
    ] {
        assert!(
            matches!(StreamLog::open(&c, bad), Err(LogError::BadStreamName(_))),
            "{bad:?} should be rejected"
        );
    }
    let ok = "A".repeat(128);
    for good in ["x", "cam.1_a-B", ok.as_str()] {
        StreamLog::open(&c, good).unwrap();
    }
    fs::write(tmp.path().join("logs").join("stray-file"), b"").unwrap();
    fs::create_dir(tmp.path().join("logs").join(".trash")).unwrap();
    let mut expected = vec!["x".to_owned(), "cam.1_a-B".to_owned(), ok.clone()];
    expected.sort();
    assert_eq!(StreamLog::list(&c).unwrap(), expected);
    let log = StreamLog::open(&c, "x").unwrap();
    log.remove().unwrap();
    assert!(!tmp.path().join("logs").join("x").exists());
    assert_eq!(StreamLog::list(&c).unwrap().len(), 2);
}

#[test]
fn fsync_policy_text_and_serde_forms() {
    for (text, p) in [
        ("always", FsyncPolicy::Always),
        ("never", FsyncPolicy::Never),
        (
            "interval:100ms",
            FsyncPolicy::Interval(Duration::from_millis(100)),
        ),
        ("interval:2s", FsyncPolicy::Interval(Duration::from_secs(2))),
        (
            "interval:250",
            FsyncPolicy::Interval(Duration::from_millis(250)),
        ),
    ] {
        assert_eq!(text.parse::<FsyncPolicy>().unwrap(), p, "{text}");
    }
    for bad in ["sometimes", "interval:", "interval:0ms", "interval:xms", ""] {
        assert!(bad.parse::<FsyncPolicy>().is_err(), "{bad}");
    }
    let p = FsyncPolicy::Interval(Duration::from_millis(100));
    assert_eq!(p.to_string(), "interval:100ms");
    assert_eq!(serde_json::to_string(&p).unwrap(), r#"{"interval_ms":100}"#);
    assert_eq!(
        serde_json::to_string(&FsyncPolicy::Always).unwrap(),
        r#""always""#
    );
    for (json, want) in [
        (r#""always""#, FsyncPolicy::Always),
        (r#""never""#, FsyncPolicy::Never),
        (r#"{"interval_ms":100}"#, p),
        (r#""interval:100ms""#, p),
    ] {
        assert_eq!(serde_json::from_str::<FsyncPolicy>(json).unwrap(), want);
    }
    for bad in [
        r#""sometimes""#,
        r#"{"interval_ms":0}"#,
        r#"{"interval_ms":5,"x":1}"#,
        "3",
    ] {
        assert!(serde_json::from_str::<FsyncPolicy>(bad).is_err(), "{bad}");
    }
}

#[test]
fn errors_say_what_and_where() {
    let e = LogError::Gap {
        expected: 5,
        got: 7,
    };
    assert_eq!(
        e.to_string(),
        "chunk log: sequence gap: expected seq 5, got 7"
    );
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    fs::write(&file, b"").unwrap();
    let c = cfg(&file, 1 << 20, FsyncPolicy::Never);
    let e = StreamLog::open(&c, "s").unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("a-file"), "{msg}");
}

// ---- model-based proptest ----

#[derive(Debug, Clone)]
enum Op {
    /// Append `next_seq - back` (a duplicate when back > 0), or a gap when `gap`.
    Append {
        back: u8,
        gap: bool,
        len: u8,
    },
    Sync,
    Reopen,
    Read {
        from_back: u8,
        max: u8,
    },
    Retain,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u8..3, any::<u8>(), prop::bool::weighted(0.05)).prop_map(|(b, len, gap)| Op::Append {
            back: if b == 2 { 0 } else { b },
            gap,
            len
        }),
        1 => Just(Op::Sync),
        1 => Just(Op::Reopen),
        2 => (any::<u8>(), 1u8..20).prop_map(|(from_back, max)| Op::Read { from_back, max }),
        1 => Just(Op::Retain),
    ]
}

fn policy() -> impl Strategy<Value = FsyncPolicy> {
    prop_oneof![
        Just(FsyncPolicy::Always),
        Just(FsyncPolicy::Never),
        Just(FsyncPolicy::Interval(Duration::from_millis(10))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn reads_always_equal_the_model(
        ops in prop::collection::vec(op(), 1..120),
        fsync in policy(),
        seg in 100u64..1200,
        retain in prop::option::of(1000u64..5000),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = cfg(tmp.path(), seg, fsync);
        c.retention_bytes = retain;
        let mut log = StreamLog::open(&c, "p").unwrap();
        // model: the records the log holds, from `first`.
        let mut model: Vec<Record> = Vec::new();
        let mut first = 0u64;
        let mut next = 0u64;
        for op in ops {
            match op {
                Op::Append { back, gap, len } => {
                    let mk = |seq: u64| Record {
                        seq,
                        pts: (seq as i64) * 10,
                        flags: len,
                        payload: Bytes::from(vec![len; len as usize]),
                    };
                    if gap {
                        let r = log.append(&mk(next + 1));
                        let is_gap = matches!(r, Err(LogError::Gap { expected, got }) if expected == next && got == next + 1);
                        prop_assert!(is_gap);
                    } else if u64::from(back) > 0 && next >= u64::from(back) {
                        prop_assert_eq!(log.append(&mk(next - u64::from(back))).unwrap(), AppendOutcome::Duplicate);
                    } else {
                        prop_assert_eq!(log.append(&mk(next)).unwrap(), AppendOutcome::Appended);
                        model.push(mk(next));
                        next += 1;
                    }
                }
                Op::Sync => {
                    log.sync().unwrap();
                    prop_assert_eq!(log.durable_through(), next.checked_sub(1));
                }
                Op::Reopen => {
                    drop(log);
                    log = StreamLog::open(&c, "p").unwrap();
                    prop_assert!(log.recovery().is_clean(), "{:?}", log.recovery());
                }
                Op::Read { from_back, max } => {
                    let from = next.saturating_sub(u64::from(from_back));
                    let got = log.read(from, max as usize, usize::MAX);
                    if from < first {
                        let trimmed = matches!(got, Err(LogError::Trimmed { first_seq }) if first_seq == first);
                        prop_assert!(trimmed);
                    } else {
                        let want: Vec<Record> = model
                            .iter()
                            .filter(|r| r.seq >= from)
                            .take(max as usize)
                            .cloned()
                            .collect();
                        prop_assert_eq!(got.unwrap(), want);
                    }
                }
                Op::Retain => {
                    let r = log.enforce_retention(SystemTime::now()).unwrap();
                    first = r.first_seq;
                    model.retain(|m| m.seq >= first);
                    if let Some(limit) = retain {
                        // Over the limit only if just the active segment is left.
                        prop_assert!(log.total_bytes() <= limit || segments(&tmp.path().join("p")).len() == 1);
                    }
                }
            }
            prop_assert_eq!(log.next_seq(), next);
            prop_assert_eq!(log.first_seq(), first);
        }
        prop_assert_eq!(log.read(first, usize::MAX, usize::MAX).unwrap(), model);
    }
}

#[test]
fn start_at_moves_an_empty_log_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig::new(dir.path());
    {
        let mut log = StreamLog::open(&cfg, "late").unwrap();
        log.start_at(500).unwrap();
        assert_eq!((log.first_seq(), log.next_seq()), (500, 500));
        assert!(matches!(
            log.append(&Record {
                seq: 0,
                pts: 0,
                flags: 0,
                payload: bytes::Bytes::from_static(b"old")
            }),
            Ok(AppendOutcome::Duplicate)
        ));
        log.append(&Record {
            seq: 500,
            pts: 1,
            flags: 0,
            payload: bytes::Bytes::from_static(b"x"),
        })
        .unwrap();
        assert!(matches!(
            log.start_at(7),
            Err(LogError::NotEmpty { next_seq: 501 })
        ));
    }
    let log = StreamLog::open(&cfg, "late").unwrap();
    assert!(log.recovery().is_clean(), "{:?}", log.recovery());
    assert_eq!((log.first_seq(), log.next_seq()), (500, 501));
    assert_eq!(
        log.read(500, 10, 1 << 20).unwrap()[0].payload.as_ref(),
        b"x"
    );
}
