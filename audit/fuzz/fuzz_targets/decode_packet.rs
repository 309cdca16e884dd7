//! Fuzzes the packet decoder, the handshake parser and the chain seal of
//! whatever decodes: `cargo +nightly fuzz run decode_packet` from `audit/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use safehouse_audit::{decode_packet, Body, Chain};

fuzz_target!(|data: &[u8]| {
    let _ = safehouse_audit::wire::parse_handshake(data);
    if let Ok(decoded) = decode_packet(data) {
        if let Body::Event(mut event) = decoded.body {
            let mut chain = Chain::new("fuzz");
            event.sandbox_id = String::new();
            let line = chain
                .seal(&mut event)
                .expect("a decoded event always seals");
            assert_eq!(line.last(), Some(&b'\n'));
            assert_eq!(
                line.iter().filter(|&&b| b == b'\n').count(),
                1,
                "one line per event"
            );
        }
    }
});
