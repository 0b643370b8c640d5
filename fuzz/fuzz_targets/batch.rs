//! Dynamic batching's merge and split: random requests (rows, outputs asked for) for a model
//! with random input datatypes and inner dimensions are merged into one batch, passed through
//! an identity model and split back; each request must get exactly its own rows.

#![no_main]

use arbitrary::Arbitrary;
use ferry::server::fuzzing::{BatchCase, BatchJob, batch_round_trip};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    datatypes: Vec<u8>,
    inner: Vec<Vec<u8>>,
    jobs: Vec<(u8, Vec<u8>)>,
    extra_row: bool,
}

fuzz_target!(|input: Input| {
    // Small dimensions, zero included: the interesting cases are the edges, not the sizes.
    let case = BatchCase {
        datatypes: input.datatypes.into_iter().take(6).collect(),
        inner: input
            .inner
            .into_iter()
            .take(6)
            .map(|dims| {
                dims.into_iter()
                    .take(3)
                    .map(|d| usize::from(d % 5))
                    .collect()
            })
            .collect(),
        jobs: input
            .jobs
            .into_iter()
            .take(32)
            .map(|(rows, outputs)| BatchJob {
                rows: usize::from(rows % 17),
                outputs: outputs.into_iter().take(8).map(usize::from).collect(),
            })
            .collect(),
        extra_row: input.extra_row,
    };
    if let Err(broken) = batch_round_trip(&case) {
        panic!("{broken}\n{case:?}");
    }
});
