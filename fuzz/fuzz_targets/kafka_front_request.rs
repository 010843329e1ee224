//! The Kafka front's request decoding path (framing, header, Produce bounds and body, record
//! batches with every compression, event times) on arbitrary bytes: no panic, no abort, no
//! allocation beyond the input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sluice_gate_sidecar::fuzz_request(data);
});
