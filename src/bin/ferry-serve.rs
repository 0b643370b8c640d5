//! `ferry-serve`: the model server alone (`ferry-serve serve-model --config FILE`), the binary
//! serving images carry. Built beside `ferry` by every build, so the Python wheel ships both;
//! the linker keeps only what the server reaches, so the CLI adds nothing to it.

// The allocator `ferry` has, for the reason src/main.rs gives.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(ferry::server::main());
}
