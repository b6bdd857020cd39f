//! Process-level crash test (S3 on a real file): a child process writes to a file-backed volume
//! with random flushes and FUA writes and is killed with SIGKILL at a random moment, 50 times.
//! After each kill the parent checks the journal on disk, reopens the volume (recovery), and
//! reads every sector: it must hold the newest write that was durable (flushed or FUA) before
//! the kill, or a later write, never an older one.
//!
//! The child is this same test binary, started with `TANDEM_CRASH_CHILD` set, running the
//! `crash_child` test, which does nothing otherwise.

use std::collections::BTreeMap;
use std::io::{BufRead, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;
use engine::buffer::IoBufMut;
use engine::format::{FormatOptions, InitialData, format};
use engine::generation::Generation;
use engine::journal::record::{RECORD_HEADER_BYTES, RecordKind};
use engine::layout::LayoutParams;
use engine::prng::Prng;
use engine::replica::{AdminCommand, ClientOp, ReplicaConfig};
use engine::runtime::backing::Backing;
use engine::runtime::{LocalVolume, RuntimeOptions, metadata};
use engine::types::{NodeId, SECTOR_BYTES};

const ITERATIONS: u64 = 50;
const BACKING_BYTES: u64 = 96 << 20;
const WRITE_SECTORS_MAX: u64 = 128;
/// How long the child may take to log the operations the parent waits for.
const CHILD_PROGRESS_TIMEOUT: Duration = Duration::from_secs(60);

fn params() -> LayoutParams {
    LayoutParams {
        al_slots: 64,
        al_extent_bytes: 1 << 20,
        journal_bytes: 32 << 20,
        ..LayoutParams::default()
    }
}

fn config() -> ReplicaConfig {
    let mut config = ReplicaConfig::new("crash", NodeId(0));
    config.journal_memory_bytes_max = 0; // Every record goes to the ring at once.
    config.request_bytes_max = 1 << 20;
    config
}

fn stamp(buffer: &mut [u8], id: u64, sector: u64) {
    buffer[..8].copy_from_slice(&id.to_le_bytes());
    buffer[8..16].copy_from_slice(&sector.to_le_bytes());
    let word = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ sector;
    for chunk in buffer[16..].chunks_mut(8) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
}

/// The write id stamped in a sector, 0 for zeros, or `None` for anything else.
fn decode(buffer: &[u8], sector: u64) -> Option<u64> {
    if buffer.iter().all(|&b| b == 0) {
        return Some(0);
    }
    let id = u64::from_le_bytes(buffer[..8].try_into().ok()?);
    let at = u64::from_le_bytes(buffer[8..16].try_into().ok()?);
    let word = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ sector;
    let body = buffer[16..].chunks(8).all(|c| c == word.to_le_bytes());
    (at == sector && body).then_some(id)
}

#[test]
fn crash_child() {
    let Ok(path) = std::env::var("TANDEM_CRASH_CHILD") else {
        return;
    };
    let seed: u64 = std::env::var("TANDEM_CRASH_SEED")
        .expect("seed")
        .parse()
        .expect("number");
    let log_path = std::env::var("TANDEM_CRASH_LOG").expect("log path");
    let mut log = std::fs::File::create(log_path).expect("log");
    let volume =
        LocalVolume::open(Path::new(&path), config(), RuntimeOptions::default()).expect("open");
    let handle = volume.handle();
    handle
        .admin(AdminCommand::Promote { force: false })
        .expect("promote");
    let data_sectors = volume_data_bytes(&handle) / SECTOR_BYTES;
    let mut prng = Prng::from_seed(seed);
    let mut completed = 0u64;
    let (sender, receiver) = bounded(1);
    for id in 1.. {
        if prng.chance(1, 6) {
            log_line(&mut log, &format!("S {completed}"));
            let sender = sender.clone();
            handle.submit(
                ClientOp::Flush,
                Box::new(move |result| sender.send(result).expect("wait")),
            );
            receiver.recv().expect("completion").expect("flush");
            log_line(&mut log, &format!("F {completed}"));
            continue;
        }
        let sectors = prng.range_inclusive(1, WRITE_SECTORS_MAX);
        let first = prng.below(data_sectors - sectors + 1);
        let fua = prng.chance(1, 8);
        let mut buffer = IoBufMut::zeroed((sectors * SECTOR_BYTES) as usize);
        for (index, chunk) in buffer
            .as_mut_slice()
            .chunks_mut(SECTOR_BYTES as usize)
            .enumerate()
        {
            stamp(chunk, id, first + index as u64);
        }
        let op = ClientOp::Write {
            offset: first * SECTOR_BYTES,
            data: buffer.freeze(),
            fua,
        };
        let sender = sender.clone();
        handle.submit(
            op,
            Box::new(move |result| sender.send(result).expect("wait")),
        );
        receiver.recv().expect("completion").expect("write");
        completed = id;
        log_line(
            &mut log,
            &format!("W {id} {first} {sectors} {}", u8::from(fua)),
        );
    }
}

/// Appends one line with a single `write` so that the parent never reads half of one.
fn log_line(log: &mut std::fs::File, line: &str) {
    log.write_all(format!("{line}\n").as_bytes()).expect("log");
}

fn volume_data_bytes(handle: &engine::runtime::VolumeHandle) -> u64 {
    handle.status().size_bytes
}

/// What the child's log says happened before it was killed.
#[derive(Default)]
struct ChildLog {
    /// Completed writes: id -> (first sector, sectors, FUA).
    writes: BTreeMap<u64, (u64, u64, bool)>,
    /// Writes 1..=n are durable: the largest n of a completed flush.
    flushed_through: u64,
    lines: usize,
}

fn read_log(path: &Path) -> ChildLog {
    let mut log = ChildLog::default();
    let Ok(file) = std::fs::File::open(path) else {
        return log;
    };
    let mut reader = std::io::BufReader::new(file);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) if line.ends_with('\n') => {}
            // A line still being written (or cut by the kill) is not an operation yet.
            Ok(_) => break,
            Err(error) => panic!("reading the child's log: {error}"),
        }
        let line = line.trim_end();
        let fields: Vec<u64> = line
            .split(' ')
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        match (line.as_bytes().first(), fields.as_slice()) {
            (Some(b'W'), [id, first, sectors, fua]) => {
                log.writes.insert(*id, (*first, *sectors, *fua == 1));
            }
            (Some(b'F'), [through]) => log.flushed_through = log.flushed_through.max(*through),
            _ => {}
        }
        log.lines += 1;
    }
    log
}

fn format_volume(path: &Path) {
    std::fs::write(path, b"").expect("create");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open");
    file.set_len(BACKING_BYTES).expect("size");
    let options = FormatOptions {
        volume_name: "crash".to_string(),
        params: params(),
        instance_id: *b"crash-test-insta",
        created_unix_millis: 1,
        initial: InitialData::InSync {
            generation: Generation(0xC0FFEE),
        },
    };
    let backing = Backing::open(path).expect("backing");
    for (offset, bytes) in format(BACKING_BYTES, &options).expect("fits").writes {
        let data = engine::buffer::IoBuf::copy_from(&bytes);
        let op = engine::replica::StorageOp::Write {
            offset,
            data,
            fua: false,
        };
        backing.execute(&op).expect("format write");
    }
    backing.sync().expect("sync");
}

/// Every Write record in the journal on disk must carry the data of one logged (or in-flight)
/// write, for the range its header names, and records must be in write order.
fn check_journal(path: &Path, log: &ChildLog) -> u64 {
    let report = metadata::inspect(path).expect("inspect");
    let backing = Backing::open(path).expect("backing");
    let mut last_id = 0;
    for record in &report.journal_entries {
        assert_eq!(record.header.kind, RecordKind::Write);
        let start = report.journal_offset + record.ring_offset + RECORD_HEADER_BYTES;
        let payload = backing
            .read(start, u64::from(record.header.length))
            .expect("read record");
        let first = record.header.offset / SECTOR_BYTES;
        let id = decode(&payload.as_slice()[..512], first).expect("record holds stamped data");
        for (index, chunk) in payload.as_slice().chunks(SECTOR_BYTES as usize).enumerate() {
            assert_eq!(
                decode(chunk, first + index as u64),
                Some(id),
                "record {}",
                record.header.seq
            );
        }
        assert!(id > last_id, "journal records in write order");
        last_id = id;
        if let Some((logged_first, logged_sectors, _)) = log.writes.get(&id) {
            assert_eq!(
                (first, u64::from(record.header.length) / SECTOR_BYTES),
                (*logged_first, *logged_sectors)
            );
        }
    }
    report.journal_records
}

/// Every sector holds its newest durable write or a later one.
fn check_data(path: &Path, log: &ChildLog) {
    let mut durable: Vec<u64> = Vec::new();
    let volume = LocalVolume::open(path, config(), RuntimeOptions::default()).expect("reopen");
    let report = volume.recovery_report().expect("report").clone();
    assert!(
        !report.clean_shutdown,
        "a SIGKILL is not a clean shutdown: {report}"
    );
    let handle = volume.handle();
    handle
        .admin(AdminCommand::Promote { force: false })
        .expect("promote after recovery");
    let data_bytes = volume_data_bytes(&handle);
    durable.resize((data_bytes / SECTOR_BYTES) as usize, 0);
    for (id, (first, sectors, fua)) in &log.writes {
        if *id <= log.flushed_through || *fua {
            for sector in *first..first + sectors {
                durable[sector as usize] = durable[sector as usize].max(*id);
            }
        }
    }
    let chunk = 1 << 20;
    let (sender, receiver) = bounded(1);
    for offset in (0..data_bytes).step_by(chunk as usize) {
        let length = chunk.min(data_bytes - offset);
        let sender = sender.clone();
        handle.submit(
            ClientOp::Read { offset, length },
            Box::new(move |r| sender.send(r).expect("wait")),
        );
        let data = receiver
            .recv()
            .expect("read")
            .expect("read ok")
            .expect("data");
        for (index, bytes) in data.as_slice().chunks(SECTOR_BYTES as usize).enumerate() {
            let sector = offset / SECTOR_BYTES + index as u64;
            let found =
                decode(bytes, sector).unwrap_or_else(|| panic!("sector {sector} is garbage"));
            let expected = durable[sector as usize];
            assert!(
                found >= expected,
                "S3 violated: sector {sector} holds write {found}, write {expected} was durable"
            );
        }
    }
    volume.close().expect("close");
}

#[test]
fn sigkill_at_random_moments_loses_no_durable_write() {
    let dir: PathBuf = std::env::temp_dir().join(format!("tandem-crash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("volume.img");
    let log_path = dir.join("child.log");
    let mut prng = Prng::from_seed(0x5EED);
    let mut journals_recovered = 0;
    for iteration in 0..ITERATIONS {
        format_volume(&path);
        let _ = std::fs::remove_file(&log_path);
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env("TANDEM_CRASH_CHILD", &path)
            .env("TANDEM_CRASH_SEED", iteration.to_string())
            .env("TANDEM_CRASH_LOG", &log_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        // Kill once the child has logged a random number of operations (bounded wait).
        let target_lines = prng.range_inclusive(5, 400) as usize;
        let started = Instant::now();
        let mut seen = read_log(&log_path).lines;
        while seen < target_lines {
            if let Some(status) = child.try_wait().expect("poll child") {
                panic!("child exited on its own ({status}) in iteration {iteration}");
            }
            if started.elapsed() > CHILD_PROGRESS_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "child logged {seen} of {target_lines} operations in {:?} (iteration {iteration})",
                    started.elapsed()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
            seen = read_log(&log_path).lines;
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        let log = read_log(&log_path);
        assert!(
            log.lines >= seen,
            "the child's log shrank from {seen} to {} lines in iteration {iteration}",
            log.lines
        );
        let records = check_journal(&path, &log);
        if records > 0 {
            journals_recovered += 1;
        }
        check_data(&path, &log);
    }
    assert!(
        journals_recovered >= ITERATIONS / 2,
        "journal recovered in {journals_recovered} runs"
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
