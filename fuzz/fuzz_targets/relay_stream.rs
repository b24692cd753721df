//! Splitting a streamed response into signed batches, on arbitrary bytes fed in
//! arbitrary pieces: never panics, an error sticks, and piecewise decoding equals whole
//! decoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lode_kernels::relay;

fuzz_target!(|data: &[u8]| {
    let whole = relay::decode_stream(data);
    let step = (data.first().copied().unwrap_or(1) as usize % 13) + 1;
    let mut d = relay::StreamDecoder::new();
    let mut batches = Vec::new();
    let mut failed = false;
    for chunk in data.chunks(step) {
        match d.push(chunk) {
            Ok(b) => batches.extend(b),
            Err(_) => failed = true,
        }
    }
    let piecewise = d.finish().map(|last| {
        batches.extend(last);
        batches
    });
    assert!(!failed || piecewise.is_err(), "an error sticks");
    assert_eq!(whole.ok(), piecewise.ok());
});
