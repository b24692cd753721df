//! lode's relayminer as a library: `serve` (the relay proxy). The `relayminer` binary
//! adds the command line and the session store.

pub mod serve;
