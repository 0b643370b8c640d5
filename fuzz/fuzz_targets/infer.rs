//! Request bodies through the v2 `infer` decoder (JSON, and JSON plus binary tensor data) and
//! the v1 `instances` decoder, checked against models of several shapes and datatypes; the
//! input's layout is in `ferry::server::fuzzing::infer`. Run with `-malloc_limit_mb` so that a
//! body making the decoder allocate for a huge declared shape fails loudly.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = ferry::server::fuzzing::infer(data) {
        panic!("{broken}");
    }
});
