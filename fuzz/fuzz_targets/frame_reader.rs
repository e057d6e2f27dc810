//! Arbitrary bytes into the frame reader and the frame decoders: no panic,
//! no frame above the maximum, no buffer beyond it.
#![no_main]
#![allow(dead_code)]

#[path = "../../src/codec/mod.rs"]
mod codec;
#[path = "../../src/wire.rs"]
mod wire;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first two bytes pick the maximum frame size; the rest is the stream.
    let Some((max, stream)) = data.split_first_chunk::<2>() else {
        return;
    };
    let max = u32::from(u16::from_le_bytes(*max)) + 1;
    let mut reader = wire::FrameReader::new(stream, max);
    while let Ok(Some(frame)) = reader.next_frame() {
        // The kind byte and the rest fit the maximum.
        assert!(frame.rest.len() < max as usize);
        let _ = frame.id_and_payload();
        let _ = wire::decode_hello(&frame);
        let _ = wire::decode_bootstrap(&frame);
        reader.shrink();
    }
});
