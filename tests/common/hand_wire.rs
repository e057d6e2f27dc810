//! The wire protocol spoken by hand, written from the documentation at the
//! top of `src/wire.rs` and `src/ring.rs` (protocol 3: a socket pair, BOOT
//! first on it, then the worker's messages through its result ring), so
//! that a test worker can say things the library's own worker never would
//! (tests/hostile.rs, tests/security.rs, tests/decoder_props.rs). Payloads
//! are encoded with the codec this build uses (`worker_facade::codec`:
//! bincode 2, or postcard 1 with the `postcard` feature).

use std::io::{self, Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::Duration;

use worker_facade::{PROTOCOL_VERSION, codec};

pub const MAGIC: u32 = 0x5746_4143; // "WFAC"
pub const KIND_TASK: u8 = 0x01;
pub const KIND_STOP: u8 = 0x02;
pub const KIND_CANCEL: u8 = 0x03;
pub const KIND_HELLO: u8 = 0x10;
pub const KIND_STARTED: u8 = 0x11;
pub const KIND_OK: u8 = 0x12;
pub const KIND_ERR: u8 = 0x13;
pub const KIND_UNDECODABLE: u8 = 0x14;
pub const KIND_NOT_SERVING: u8 = 0x15;
pub const KIND_PROGRESS: u8 = 0x17;
pub const KIND_OK_STARTED: u8 = 0x19;
pub const KIND_BOOT: u8 = 0x20;
pub const TOKEN_LEN: usize = 16;
/// The handshake's `protocol`: the version in the low 24 bits, the codec's
/// number in the high 8.
pub const PROTOCOL: u32 = PROTOCOL_VERSION | (codec::ID as u32) << 24;
/// The same for the codec this build does not use.
pub const PROTOCOL_OTHER_CODEC: u32 = PROTOCOL ^ 1 << 24;

/// The worker's end of its socket to the parent, inherited as the
/// descriptor named in this variable.
pub const FD_ENV: &str = "WORKER_FACADE_FD";

/// What the BOOT frame tells the worker (its options are skipped), and the
/// socket it came on.
pub struct Boot {
    pub token: [u8; TOKEN_LEN],
    pub stream: UnixStream,
}

impl Boot {
    /// The connection to the parent (the BOOT frame already read from it).
    pub fn connect(&self) -> UnixStream {
        self.stream
            .try_clone()
            .expect("a second handle on the socket")
    }
}

/// Takes the inherited socket and reads `BOOT = len:u32le 0x20 magic:u32le
/// protocol:u32le token[16] options` from it.
pub fn read_boot() -> Boot {
    let fd: i32 = std::env::var(FD_ENV)
        .expect("the parent names the socket's descriptor")
        .parse()
        .expect("a descriptor number");
    // SAFETY: the parent handed this process the descriptor for it alone,
    // and this is the only place that takes it.
    let mut stream = unsafe { UnixStream::from_raw_fd(fd) };
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).expect("BOOT length");
    let len = u32::from_le_bytes(len) as usize;
    assert!(len <= 64 * 1024, "BOOT frame of {len} bytes");
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).expect("BOOT body");
    assert_eq!(body[0], KIND_BOOT, "the first frame is BOOT");
    let word = |at: usize| u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes"));
    assert_eq!(word(1), MAGIC, "BOOT magic");
    assert_eq!(word(5), PROTOCOL, "BOOT protocol");
    let mut token = [0u8; TOKEN_LEN];
    token.copy_from_slice(&body[9..9 + TOKEN_LEN]);
    Boot { token, stream }
}

/// `len:u32le kind [id:u64le] payload`.
pub fn frame(kind: u8, id: Option<u64>, payload: &[u8]) -> Vec<u8> {
    let len = 1 + if id.is_some() { 8 } else { 0 } + payload.len();
    let mut out = (len as u32).to_le_bytes().to_vec();
    out.push(kind);
    if let Some(id) = id {
        out.extend_from_slice(&id.to_le_bytes());
    }
    out.extend_from_slice(payload);
    out
}

/// `HELLO = 0x10 magic:u32le protocol:u32le pid:u32le token[16] crate_version`.
pub fn hello(magic: u32, protocol: u32, token: &[u8; TOKEN_LEN], version: &str) -> Vec<u8> {
    let mut payload = magic.to_le_bytes().to_vec();
    payload.extend_from_slice(&protocol.to_le_bytes());
    payload.extend_from_slice(&std::process::id().to_le_bytes());
    payload.extend_from_slice(token);
    payload.extend_from_slice(version.as_bytes());
    frame(KIND_HELLO, None, &payload)
}

/// The HELLO the library's own worker would send.
pub fn honest_hello(token: &[u8; TOKEN_LEN]) -> Vec<u8> {
    hello(MAGIC, PROTOCOL, token, env!("CARGO_PKG_VERSION"))
}

/// An output encoded as the codec does.
pub fn encoded(output: &str) -> Vec<u8> {
    codec::encode(output).expect("encodes")
}

/// A task's payload (a TASK frame's body after its ID) decoded.
pub fn decoded<T: serde::de::DeserializeOwned>(payload: &[u8]) -> T {
    codec::decode(payload).expect("a task of the expected type")
}

/// The codec's length prefix claiming `len` bytes (of a string), with no
/// bytes after it.
pub fn length_claim(len: u64) -> Vec<u8> {
    if cfg!(feature = "postcard") {
        // LEB128: seven bits a byte, the high bit set on all but the last.
        let mut out = Vec::new();
        let mut rest = len;
        loop {
            let byte = (rest & 0x7f) as u8;
            rest >>= 7;
            if rest == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    } else {
        // Bincode's varint: the tag 253 announces a u64.
        let mut out = vec![253u8];
        out.extend_from_slice(&len.to_le_bytes());
        out
    }
}

/// Reads one frame from the parent: its kind and the rest of its body. Fails
/// at the end of the stream, on any read error, and on a length outside
/// 1 byte ..= 64 MiB.
pub fn try_read_frame(stream: &mut UnixStream) -> io::Result<(u8, Vec<u8>)> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if !(1..=64 << 20).contains(&len) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes"),
        ));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    let kind = body.remove(0);
    Ok((kind, body))
}

/// Reads one frame from the parent; `None` at the end of the stream, a panic
/// on anything else that goes wrong.
pub fn read_frame(stream: &mut UnixStream) -> Option<(u8, Vec<u8>)> {
    match try_read_frame(stream) {
        Ok(frame) => Some(frame),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => None,
        Err(e) => panic!("reading from the parent: {e}"),
    }
}

/// The task ID at the start of a TASK frame's body (after its kind).
pub fn task_id(rest: &[u8]) -> u64 {
    u64::from_le_bytes(rest[..8].try_into().expect("task ID"))
}

/// The descriptor of the worker's result ring, and its layout (from
/// `src/ring.rs`): a 256-byte header (TAIL at 0, HEAD at 64, PARKED at 128,
/// 64-bit words), then 1 MiB of the worker's outgoing byte stream.
pub const RING_ENV: &str = "WORKER_FACADE_RING_FD";
/// The task region's descriptor number (read-only shared memory).
pub const TASKS_ENV: &str = "WORKER_FACADE_TASKS_FD";
pub const RING_HEADER: usize = 256;
pub const RING_CAPACITY: usize = 1 << 20;
pub const KIND_WAKE: u8 = 0x18;

/// The worker's end of its result ring, mapped on first use.
pub struct Ring {
    base: *mut u8,
    tail: u64,
}

// SAFETY: one test worker thread uses it at a time (behind the mutex).
unsafe impl Send for Ring {}

impl Ring {
    fn open() -> Ring {
        let fd: i32 = std::env::var(RING_ENV)
            .expect("the parent names the ring's descriptor")
            .parse()
            .expect("a descriptor number");
        // SAFETY: a fresh shared mapping of the region the parent handed us;
        // the result is checked.
        let base = unsafe {
            nix::libc::mmap(
                std::ptr::null_mut(),
                RING_HEADER + RING_CAPACITY,
                nix::libc::PROT_READ | nix::libc::PROT_WRITE,
                nix::libc::MAP_SHARED,
                fd,
                0,
            )
        };
        assert_ne!(base, nix::libc::MAP_FAILED, "map the ring");
        Ring {
            base: base.cast(),
            tail: 0,
        }
    }

    fn word(&self, offset: usize) -> &std::sync::atomic::AtomicU64 {
        // SAFETY: an aligned word inside the mapping, which lives as long
        // as the process.
        unsafe { &*self.base.add(offset).cast() }
    }

    /// Appends `bytes` to the stream (they must fit), publishes them, and
    /// wakes the parent if it is parked.
    pub fn publish(&mut self, stream: &mut UnixStream, bytes: &[u8]) {
        use std::sync::atomic::Ordering::SeqCst;
        for &b in bytes {
            let at = RING_HEADER + (self.tail % RING_CAPACITY as u64) as usize;
            // SAFETY: inside the data area of the mapping.
            unsafe { self.base.add(at).write(b) };
            self.tail += 1;
        }
        self.word(0).store(self.tail, SeqCst);
        if self.word(128).swap(0, SeqCst) != 0 {
            let _ = stream.write_all(&frame(KIND_WAKE, None, &[]));
        }
    }

    /// Copies `bytes` into the ring after the published tail without
    /// publishing them (a worker killed before its TAIL store).
    pub fn write_unpublished(&mut self, bytes: &[u8]) {
        for (at, &b) in (self.tail..).zip(bytes) {
            let off = RING_HEADER + (at % RING_CAPACITY as u64) as usize;
            // SAFETY: inside the data area of the mapping.
            unsafe { self.base.add(off).write(b) };
        }
    }

    /// Waits until the parent has read everything published.
    pub fn wait_drained(&self) {
        while self.word(64).load(std::sync::atomic::Ordering::SeqCst) != self.tail {
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// The tail published so far.
    pub fn tail(&self) -> u64 {
        self.tail
    }

    /// Stores `tail` as the ring's TAIL without waking the parent.
    pub fn scribble_tail_silently(&mut self, tail: u64) {
        self.tail = tail;
        self.word(0)
            .store(tail, std::sync::atomic::Ordering::SeqCst);
    }

    /// Stores anything as the ring's TAIL (a scribbling worker).
    pub fn scribble_tail(&mut self, stream: &mut UnixStream, tail: u64) {
        self.tail = tail;
        self.publish(stream, &[]);
    }
}

static RING: std::sync::Mutex<Option<Ring>> = std::sync::Mutex::new(None);
static GREETED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Runs `f` on this worker's ring.
pub fn with_ring<R>(f: impl FnOnce(&mut Ring) -> R) -> R {
    let mut ring = RING.lock().unwrap_or_else(|p| p.into_inner());
    f(ring.get_or_insert_with(Ring::open))
}

/// Says something to the parent, which may have hung up already: that is
/// its right. Until a HELLO went out, bytes go on the socket; after it,
/// into the result ring, as the library's worker sends everything but its
/// handshake.
pub fn send(stream: &mut UnixStream, bytes: &[u8]) {
    use std::sync::atomic::Ordering::SeqCst;
    if GREETED.load(SeqCst) {
        with_ring(|ring| ring.publish(stream, bytes));
        return;
    }
    if bytes.get(4) == Some(&KIND_HELLO) {
        GREETED.store(true, SeqCst);
    }
    let _ = stream.write_all(bytes);
}

pub fn sleep_forever() -> ! {
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}

/// Closes the connection to the parent but keeps the process running.
pub fn close_and_linger(stream: UnixStream) -> ! {
    let _ = stream.shutdown(std::net::Shutdown::Both);
    drop(stream);
    sleep_forever()
}

/// A worker process ending itself, not the library.
pub fn exit(code: i32) -> ! {
    std::process::exit(code)
}

pub fn from_hex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
