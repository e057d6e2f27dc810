//! The wire protocol spoken by hand, written from the documentation at the
//! top of `src/wire.rs`, so that a test worker can say things the library's
//! own worker never would (tests/hostile.rs, tests/security.rs,
//! tests/decoder_props.rs).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::Duration;

use worker_facade::PROTOCOL_VERSION;

pub const MAGIC: u32 = 0x5746_4143; // "WFAC"
pub const KIND_TASK: u8 = 0x01;
pub const KIND_STOP: u8 = 0x02;
pub const KIND_HELLO: u8 = 0x10;
pub const KIND_STARTED: u8 = 0x11;
pub const KIND_OK: u8 = 0x12;
pub const KIND_ERR: u8 = 0x13;
pub const KIND_BOOT: u8 = 0x20;
pub const TOKEN_LEN: usize = 16;

/// What the BOOT frame on stdin tells the worker (its options are skipped).
pub struct Boot {
    pub token: [u8; TOKEN_LEN],
    pub path: String,
}

impl Boot {
    /// Connects to the parent's socket (without saying HELLO).
    pub fn connect(&self) -> UnixStream {
        UnixStream::connect(&self.path).expect("connect to the parent's socket")
    }
}

/// Reads `BOOT = len:u32le 0x20 magic:u32le protocol:u32le token[16]
/// path_len:u16le path options` from stdin.
pub fn read_boot() -> Boot {
    let mut stdin = io::stdin().lock();
    let mut len = [0u8; 4];
    stdin.read_exact(&mut len).expect("BOOT length on stdin");
    let len = u32::from_le_bytes(len) as usize;
    assert!(len <= 64 * 1024, "BOOT frame of {len} bytes");
    let mut body = vec![0u8; len];
    stdin.read_exact(&mut body).expect("BOOT body on stdin");
    assert_eq!(body[0], KIND_BOOT, "first frame on stdin is BOOT");
    let word = |at: usize| u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes"));
    assert_eq!(word(1), MAGIC, "BOOT magic");
    assert_eq!(word(5), PROTOCOL_VERSION, "BOOT protocol");
    let mut token = [0u8; TOKEN_LEN];
    token.copy_from_slice(&body[9..9 + TOKEN_LEN]);
    let at = 9 + TOKEN_LEN;
    let path_len = u16::from_le_bytes([body[at], body[at + 1]]) as usize;
    let path = String::from_utf8(body[at + 2..at + 2 + path_len].to_vec()).expect("UTF-8 path");
    Boot { token, path }
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
    hello(MAGIC, PROTOCOL_VERSION, token, env!("CARGO_PKG_VERSION"))
}

/// An output encoded as the codec does (bincode 2, standard configuration).
pub fn encoded(output: &str) -> Vec<u8> {
    bincode::serde::encode_to_vec(output, bincode::config::standard()).expect("encodes")
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

/// Writes to the parent, which may have hung up already: that is its right.
pub fn send(stream: &mut UnixStream, bytes: &[u8]) {
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
