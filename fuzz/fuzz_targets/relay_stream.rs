//! Splitting a streamed response into signed batches, on arbitrary bytes fed in
//! arbitrary pieces: never panics, and piecewise decoding equals whole decoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lode_kernels::relay;

fuzz_target!(|data: &[u8]| {
    let whole = relay::decode_stream(data);
    let step = (data.first().copied().unwrap_or(1) as usize % 13) + 1;
    let mut d = relay::StreamDecoder::new();
    let mut batches = Vec::new();
    for chunk in data.chunks(step) {
        batches.extend(d.push(chunk));
    }
    let piecewise = d.finish().map(|last| {
        batches.extend(last);
        batches
    });
    assert_eq!(whole.ok(), piecewise.ok());
});
