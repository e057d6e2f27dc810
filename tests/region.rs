//! The task region (issue 9): large tasks reach their workers through
//! shared memory the workers cannot write, and every guarantee holds.
//!
//! - Large tasks of every size, growing and shrinking, arrive whole, on one
//!   worker or several; small ones still go through the socket.
//! - A span comes back when its task is answered, skipped or cancelled
//!   while queued: a region with room for one task carries a long stream.
//! - A span is written again only once its task is answered: workers
//!   decode in place, and each still reads its own task's bytes.
//! - A full region, or a task larger than it, sends the task through the
//!   socket instead: nothing is refused.
//! - A worker SIGKILLed with large tasks sent ahead: they run on the next
//!   worker and read the same bytes, while new tasks take other spans.
//! - A large task that crashed its worker runs again (`retries`) from the
//!   same span.
//! - A hostile worker can neither write to the region nor resize it,
//!   through any mapping or descriptor it can make.
//!
//! The worker is this test binary running the library's own `serve`: its
//! answer is a checksum of the task's name, and whether the task region is
//! mapped in it (`/proc/self/maps`).

mod common;

use std::time::Duration;

use common::within;
use worker_facade::simple::SimpleTask;
use worker_facade::{
    CancelReason, NotRunReason, Outcome, TaskRecord, WorkerCommand, WorkingProcessFacade,
};

/// FNV-1a of the bytes, as both sides compute it.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// What the worker answers for a task named `name`.
fn answer(name: &str, mapped: bool) -> String {
    format!(
        "{:016x} {} {}",
        checksum(name.as_bytes()),
        name.len(),
        mapped
    )
}

/// This worker's descriptors that are the task region (it must hold none
/// once serving: the library maps the region and closes it).
fn region_descriptors() -> String {
    let fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .map(|t| t.to_string_lossy().into_owned())
                .filter(|t| t.contains("worker-facade-tasks"))
                .collect()
        })
        .unwrap_or_default();
    format!("{} region descriptors", fds.len())
}

/// Proves every span came back: a task as large as the whole region, but
/// a page, goes through it only if nothing else holds a page of it.
fn assert_region_all_free(w: &WorkingProcessFacade<SimpleTask>, region: usize) {
    let before = w.stats().shared_tasks;
    let h = w
        .submit(SimpleTask::new(name(77, region - 4096 - 64), 0.0))
        .expect("accepted");
    assert!(h.wait().expect("an outcome").is_completed());
    assert_eq!(
        w.stats().shared_tasks,
        before + 1,
        "a task the size of the region found it empty: no span was kept"
    );
}

fn region_mapped() -> bool {
    std::fs::read_to_string("/proc/self/maps").is_ok_and(|m| m.contains("worker-facade-tasks"))
}

/// Tries every way of changing the region a worker has: a writable
/// mapping of its descriptor or of the same file reopened, `write(2)`,
/// resizing, and making a read-only mapping writable. Each answer is `ok`
/// or the error's name.
fn probe_region() -> String {
    use nix::sys::mman::{MapFlags, ProtFlags, mmap, mprotect};
    use std::num::NonZeroUsize;
    use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
    let Some(fd) = std::env::var("WORKER_FACADE_TASKS_FD")
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return "no region".into();
    };
    // SAFETY (test): the parent handed this descriptor down; it stays open
    // for the worker's whole life and is only borrowed here.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let name = |r: nix::Result<()>| match r {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("{e:?}"),
    };
    let page = NonZeroUsize::new(4096).expect("non-zero");
    let rw = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    // SAFETY (test): a fresh mapping the kernel places; never dereferenced.
    let map_rw = |fd: BorrowedFd<'_>| unsafe {
        mmap(None, page, rw, MapFlags::MAP_SHARED, fd, 0).map(|_| ())
    };
    let direct = name(map_rw(fd));
    let reopened = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    let reopen = match &reopened {
        Ok(file) => name(map_rw(file.as_fd())),
        Err(e) => format!("open: {:?}", e.kind()),
    };
    let write = name(nix::unistd::write(fd, b"scribble").map(|_| ()));
    let pwrite = match &reopened {
        Ok(file) => {
            use std::os::unix::fs::FileExt;
            match file.write_at(b"scribble", 0) {
                Ok(_) => "ok".into(),
                Err(e) => format!(
                    "{:?}",
                    nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0))
                ),
            }
        }
        Err(_) => "no file".into(),
    };
    let grow = name(nix::unistd::ftruncate(fd, 1 << 30));
    // SAFETY (test): a read-only shared mapping, made writable (or not)
    // and never written through.
    let upgrade = unsafe {
        match mmap(
            None,
            page,
            ProtFlags::PROT_READ,
            MapFlags::MAP_SHARED,
            fd,
            0,
        ) {
            Ok(ptr) => name(mprotect(ptr, 4096, rw)),
            Err(e) => format!("ro map: {e:?}"),
        }
    };
    format!(
        "map {direct}; reopened map {reopen}; write {write}; pwrite {pwrite}; grow {grow}; mprotect {upgrade}"
    )
}

/// The worker: it probes the region it inherited before serving (the
/// library maps it and closes the descriptor when it starts), and answers
/// `probe` with the report; a name starting `slow` sleeps first; every
/// name is answered with its checksum.
#[test]
#[ignore = "run as a worker by the tests below"]
fn region_worker_main() {
    let report = probe_region();
    worker_facade::worker::run_if_worker(move |t: SimpleTask| {
        if t.id == "probe" {
            return Ok::<_, String>(report.clone());
        }
        if t.id == "fds" {
            return Ok(region_descriptors());
        }
        if t.id.starts_with("slow") {
            std::thread::sleep(Duration::from_millis(600));
        }
        // `crash:<marker>|...`: the first worker to run it aborts.
        if let Some(marker) =
            t.id.strip_prefix("crash:")
                .and_then(|r| r.split('|').next())
        {
            if std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(marker)
                .is_ok()
            {
                std::process::abort();
            }
        }
        Ok(answer(&t.id, region_mapped()))
    });
}

fn worker() -> WorkerCommand {
    WorkerCommand::current_exe()
        .args(common::libtest_args("region_worker_main"))
        .output(worker_facade::Output::Silent)
}

/// A name of `len` bytes that differs with `seed` all along.
fn name(seed: usize, len: usize) -> String {
    (0..len)
        .map(|i| char::from(b'a' + ((i / 7 + seed) % 26) as u8))
        .collect()
}

fn assert_answered(records: &[TaskRecord<SimpleTask>]) {
    for r in records {
        match &r.outcome {
            Outcome::Completed(text) => {
                let want = format!(
                    "{:016x} {}",
                    checksum(r.task.id.as_bytes()),
                    r.task.id.len()
                );
                assert!(
                    text.starts_with(&want),
                    "task {} ({} bytes): {text}",
                    r.id,
                    r.task.id.len()
                );
            }
            other => panic!("task {} ({} bytes): {other:?}", r.id, r.task.id.len()),
        }
    }
}

#[test]
fn large_tasks_of_every_size_arrive_whole_on_one_worker_or_several() {
    within(Duration::from_secs(60), || {
        let sizes: Vec<usize> = [10, 15_000, 16_400, 20_000, 1 << 20, 3 << 20, 100, 70_000]
            .into_iter()
            .chain((0..11).map(|i| 17_000 << i)) // growing past each guess, to 17 MB
            .chain((0..11).rev().map(|i| 17_000 << i)) // and shrinking
            .collect();
        for workers in [1, 2] {
            let w = WorkingProcessFacade::<SimpleTask>::builder(worker())
                .workers(workers)
                .spawn()
                .expect("spawn");
            // One at a time: each finds the region empty, so the count
            // below is exact whatever the machine's speed.
            for (seed, &len) in sizes.iter().enumerate() {
                w.process_task(SimpleTask::new(name(seed, len), 0.0))
                    .expect("accepted");
                while w.stats().in_flight > 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            let shared = w.stats().shared_tasks;
            let records = w.collect_tasks().expect("collect");
            assert_eq!(records.len(), sizes.len());
            assert_answered(&records);
            let large = sizes.iter().filter(|&&n| n > 16 * 1024).count() as u64;
            assert_eq!(
                shared, large,
                "every large task through the region, no small one ({workers} workers)"
            );
            // The worker that ran a large task had the region mapped.
            for r in records.iter().filter(|r| r.task.id.len() > 16 * 1024) {
                let Outcome::Completed(text) = &r.outcome else {
                    unreachable!("checked above")
                };
                assert!(text.ends_with(" true"), "{text}");
            }
        }
    });
}

#[test]
fn spans_come_back_so_a_region_with_room_for_one_task_carries_a_stream() {
    within(Duration::from_secs(60), || {
        let mib = 1 << 20;
        // One 1 MiB task (and its page of slack) fits; a second does not.
        let w = WorkingProcessFacade::<SimpleTask>::builder(worker())
            .large_task_region(mib + 64 * 1024)
            .spawn()
            .expect("spawn");
        for seed in 0..40 {
            let h = w
                .submit(SimpleTask::new(name(seed, mib), 0.0))
                .expect("accepted");
            let outcome = h.wait().expect("an outcome");
            assert!(outcome.is_completed(), "{outcome:?}");
        }
        assert_eq!(
            w.stats().shared_tasks,
            40,
            "each span came back when answered"
        );
        assert_region_all_free(&w, mib + 64 * 1024);
        let records = w.collect_tasks().expect("collect");
        assert!(records.is_empty(), "every outcome went to its handle");
    });
}

/// A large task that crashed its worker is sent again (`retries`) with
/// the same TASK_AT frame: its span stays with it through the death, while
/// tasks submitted meanwhile take others.
#[test]
fn a_large_task_retried_after_its_crash_reads_the_same_bytes_again() {
    within(Duration::from_secs(60), || {
        let marker = std::env::temp_dir().join(format!("wf-region-crash-{}", std::process::id()));
        let _ = std::fs::remove_file(&marker);
        let region = 8 << 20;
        let w = WorkingProcessFacade::<SimpleTask>::builder(worker())
            .retries(1)
            .large_task_region(region)
            .spawn()
            .expect("spawn");
        let first = w.worker_pid().expect("a worker");
        let crashing = format!("crash:{}|{}", marker.display(), name(5, 300_000));
        let h = w
            .submit(SimpleTask::new(crashing.clone(), 0.0))
            .expect("accepted");
        let others: Vec<_> = (20..26)
            .map(|seed| {
                let text = format!("{seed:06}{}", name(seed, 300_000));
                let h = w
                    .submit(SimpleTask::new(text.clone(), 0.0))
                    .expect("accepted");
                (text, h)
            })
            .collect();
        assert_eq!(
            h.wait().expect("an outcome"),
            Outcome::Completed(answer(&crashing, true)),
            "run again after the crash, from its own bytes"
        );
        assert!(marker.exists(), "the first run crashed its worker");
        assert_ne!(w.worker_pid(), Some(first), "on a new worker");
        for (text, h) in others {
            assert_eq!(
                h.wait().expect("an outcome"),
                Outcome::Completed(answer(&text, true))
            );
        }
        assert_eq!(w.stats().shared_tasks, 7, "the retry is the same frame");
        assert_region_all_free(&w, region);
        assert!(w.collect_tasks().expect("collect").is_empty());
        let _ = std::fs::remove_file(&marker);
    });
}

/// The worker decodes a large task in place, so a span must not be
/// written again before its task is answered. Each task below differs from
/// every other from its first byte on, and is answered with its checksum.
#[test]
fn reused_spans_never_show_a_worker_another_tasks_bytes() {
    within(Duration::from_secs(60), || {
        let len: usize = 200_000;
        let pages = len.div_ceil(4096) + 1;
        // Room for four such tasks.
        let region = 4 * pages * 4096;
        let text = |seed: usize| format!("{seed:06}{}", name(seed, len - 6));
        // Sent ahead to a worker that sleeps first: their spans are full
        // long before it reads them, while later tasks look for room.
        let w = WorkingProcessFacade::<SimpleTask>::builder(worker())
            .large_task_region(region)
            .spawn()
            .expect("spawn");
        w.process_task(SimpleTask::new("slow", 0.0))
            .expect("accepted");
        for seed in 0..40 {
            w.process_task(SimpleTask::new(text(seed), 0.0))
                .expect("accepted");
        }
        let records = w.collect_tasks().expect("collect");
        assert_eq!(records.len(), 41);
        assert_answered(&records[1..]);
        // Streamed to two workers, never more than three in flight: every
        // task finds a span, so the four are reused all through the stream.
        let w = WorkingProcessFacade::<SimpleTask>::builder(worker())
            .workers(2)
            .large_task_region(region)
            .spawn()
            .expect("spawn");
        let tasks = 120;
        let mut waiting = std::collections::VecDeque::new();
        let settle = |(text, h): (String, worker_facade::TaskHandle<String>)| {
            let outcome = h.wait().expect("an outcome");
            assert_eq!(outcome, Outcome::Completed(answer(&text, true)));
        };
        for seed in 0..tasks {
            let h = w
                .submit(SimpleTask::new(text(seed), 0.0))
                .expect("accepted");
            waiting.push_back((text(seed), h));
            if waiting.len() == 3 {
                settle(waiting.pop_front().expect("three waiting"));
            }
        }
        waiting.into_iter().for_each(settle);
        assert_eq!(
            w.stats().shared_tasks,
            tasks as u64,
            "every task through the region, its four spans reused"
        );
        assert_region_all_free(&w, region);
        assert!(w.collect_tasks().expect("collect").is_empty());
    });
}

#[test]
fn spans_of_tasks_cancelled_in_the_engines_queue_come_back() {
    within(Duration::from_secs(60), || {
        let region = 2 << 20;
        // Two workers, both busy with a slow task: with no run time known
        // yet, each is sent one task at a time, so the large ones wait in
        // the engine's queue, each with its span.
        let w = WorkingProcessFacade::<SimpleTask>::builder(worker())
            .workers(2)
            .large_task_region(region)
            .spawn()
            .expect("spawn");
        let slow: Vec<_> = (0..2)
            .map(|i| {
                w.submit(SimpleTask::new(format!("slow{i}"), 0.0))
                    .expect("accepted")
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let queued: Vec<_> = (0..6)
            .map(|seed| {
                w.submit(SimpleTask::new(name(seed, 200_000), 0.0))
                    .expect("accepted")
            })
            .collect();
        assert_eq!(w.stats().shared_tasks, 6, "all six in the region");
        for h in &queued[..4] {
            h.cancel();
        }
        for (i, h) in queued.into_iter().enumerate() {
            let outcome = h.wait().expect("an outcome");
            if i < 4 {
                assert_eq!(
                    outcome,
                    Outcome::NotRun(NotRunReason::Cancelled(CancelReason::Requested)),
                    "task {i} was still queued"
                );
            } else {
                assert!(outcome.is_completed(), "{outcome:?}");
            }
        }
        for h in slow {
            assert!(h.wait().expect("an outcome").is_completed());
        }
        assert_region_all_free(&w, region);
        assert!(w.collect_tasks().expect("collect").is_empty());
    });
}

#[test]
fn a_full_region_or_a_task_larger_than_it_goes_through_the_socket() {
    within(Duration::from_secs(60), || {
        let w = WorkingProcessFacade::<SimpleTask>::builder(worker())
            .large_task_region(256 * 1024)
            .spawn()
            .expect("spawn");
        // Larger than the region: never through it.
        w.process_task(SimpleTask::new(name(1, 1 << 20), 0.0))
            .expect("accepted");
        assert_eq!(w.stats().shared_tasks, 0);
        // Many at once behind a slow one: the first few fill the region,
        // the rest go through the socket.
        w.process_task(SimpleTask::new(format!("slow{}", name(2, 10)), 0.0))
            .expect("accepted");
        for seed in 0..20 {
            w.process_task(SimpleTask::new(name(seed, 60_000), 0.0))
                .expect("accepted");
        }
        let shared = w.stats().shared_tasks;
        assert!(
            (1..20).contains(&shared),
            "some through the region, not all: {shared}"
        );
        let records = w.collect_tasks().expect("collect");
        assert_eq!(records.len(), 22);
        assert_answered(&records);
        // With no region at all, the worker is not even told of one.
        let w = WorkingProcessFacade::<SimpleTask>::builder(worker())
            .large_task_region(0)
            .spawn()
            .expect("spawn");
        let probe = w.submit(SimpleTask::new("probe", 0.0)).expect("accepted");
        assert_eq!(
            probe.wait().expect("an outcome"),
            Outcome::Completed("no region".into())
        );
        w.process_task(SimpleTask::new(name(3, 1 << 20), 0.0))
            .expect("accepted");
        let records = w.collect_tasks().expect("collect");
        assert_eq!(records.len(), 1, "the probe's outcome went to its handle");
        assert_answered(&records);
        assert_eq!(w.stats().shared_tasks, 0);
    });
}

#[test]
fn large_tasks_sent_ahead_to_a_killed_worker_run_on_the_next_one_with_the_same_bytes() {
    within(Duration::from_secs(60), || {
        let region = 8 << 20;
        let w = WorkingProcessFacade::<SimpleTask>::builder(worker())
            .large_task_region(region)
            .spawn()
            .expect("spawn");
        let running = w
            .submit(SimpleTask::new(format!("slow{}", name(0, 200_000)), 0.0))
            .expect("accepted");
        let ahead: Vec<String> = (1..6).map(|seed| name(seed, 300_000)).collect();
        for n in &ahead {
            w.process_task(SimpleTask::new(n.clone(), 0.0))
                .expect("accepted");
        }
        // All of them sent while the first runs: their frames are a few
        // bytes each.
        std::thread::sleep(Duration::from_millis(300));
        let pid = w.worker_pid().expect("a worker");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill the worker");
        assert!(
            matches!(running.wait().expect("an outcome"), Outcome::Crashed(_)),
            "the running task is the crash"
        );
        // New tasks meanwhile take other spans; the re-sent ones keep theirs.
        for seed in 10..15 {
            w.process_task(SimpleTask::new(name(seed, 300_000), 0.0))
                .expect("accepted");
        }
        while w.stats().in_flight > 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        // The crashed task's span came back with its worker's end, the
        // others' as they were answered.
        assert_region_all_free(&w, region);
        let records = w.collect_tasks().expect("collect");
        assert_eq!(records.len(), 10);
        assert_answered(&records);
        let names: Vec<&str> = records[..5].iter().map(|r| r.task.id.as_str()).collect();
        assert_eq!(names, ahead.iter().map(String::as_str).collect::<Vec<_>>());
        let stats = w.stats();
        assert_eq!(stats.restarts, 1);
        assert_eq!(
            stats.shared_tasks, 12,
            "every large task through the region (and the region-sized one)"
        );
    });
}

#[test]
fn a_hostile_worker_can_neither_write_nor_resize_the_region() {
    within(Duration::from_secs(30), || {
        let w = WorkingProcessFacade::<SimpleTask>::spawn(worker()).expect("spawn");
        let before = name(7, 100_000);
        w.process_task(SimpleTask::new(before.clone(), 0.0))
            .expect("accepted");
        let probe = w.submit(SimpleTask::new("probe", 0.0)).expect("accepted");
        let Outcome::Completed(report) = probe.wait().expect("an outcome") else {
            panic!("the probe did not complete")
        };
        for part in report.split("; ") {
            assert!(
                !part.ends_with(" ok"),
                "a way to change the region: {report}"
            );
        }
        assert!(report.contains("write EPERM"), "{report}");
        assert!(report.contains("grow EPERM"), "{report}");
        let fds = w.submit(SimpleTask::new("fds", 0.0)).expect("accepted");
        assert_eq!(
            fds.wait().expect("an outcome"),
            Outcome::Completed("0 region descriptors".into()),
            "the worker keeps only its read-only mapping"
        );
        // The tasks after it still read what was stored.
        for seed in 0..5 {
            w.process_task(SimpleTask::new(name(seed, 100_000), 0.0))
                .expect("accepted");
        }
        let records = w.collect_tasks().expect("collect");
        assert_answered(&records);
        assert_eq!(records.len(), 6);
    });
}

#[test]
fn after_a_large_task_a_small_one_goes_through_the_socket_within_its_frame_limit() {
    within(Duration::from_secs(30), || {
        let a = WorkingProcessFacade::<SimpleTask>::spawn(worker()).expect("spawn");
        let b = WorkingProcessFacade::<SimpleTask>::spawn(worker().max_frame_size(4096))
            .expect("spawn");
        // This thread's last task was large: the next is tried in a span.
        a.process_task(SimpleTask::new(name(1, 1 << 20), 0.0))
            .expect("accepted");
        match b.process_task(SimpleTask::new(name(2, 10_000), 0.0)) {
            Err(worker_facade::SubmitError::TooLarge { len, max, .. }) => {
                assert_eq!(max, 4096);
                assert!(len > 10_000, "{len}");
            }
            other => panic!("{other:?}"),
        }
        a.process_task(SimpleTask::new(name(3, 1 << 20), 0.0))
            .expect("accepted");
        a.process_task(SimpleTask::new(name(4, 100), 0.0))
            .expect("accepted");
        let records = a.collect_tasks().expect("collect");
        assert_answered(&records);
        assert_eq!(
            a.stats().shared_tasks,
            2,
            "the small one went by the socket"
        );
        assert!(b.collect_tasks().expect("collect").is_empty());
    });
}

#[test]
fn a_worker_with_a_memory_limit_gets_its_large_tasks_through_the_socket() {
    within(Duration::from_secs(30), || {
        // A read-only mapping of the region would count against the limit.
        let w = WorkingProcessFacade::<SimpleTask>::spawn(worker().memory_limit(512 << 20))
            .expect("spawn");
        let probe = w.submit(SimpleTask::new("probe", 0.0)).expect("accepted");
        assert_eq!(
            probe.wait().expect("an outcome"),
            Outcome::Completed("no region".into())
        );
        for seed in 0..3 {
            w.process_task(SimpleTask::new(name(seed, 1 << 20), 0.0))
                .expect("accepted");
        }
        let records = w.collect_tasks().expect("collect");
        assert_eq!(records.len(), 3);
        assert_answered(&records);
        assert_eq!(w.stats().shared_tasks, 0);
    });
}
