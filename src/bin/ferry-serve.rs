//! `ferry-serve`: the model server alone (`ferry-serve serve-model --config FILE`), the binary
//! serving images carry. Built beside `ferry` by every build, so the Python wheel ships both;
//! the linker keeps only what the server reaches, so the CLI adds nothing to it.

// The model server allocates and frees per request (the parsed tensors, the answer, hyper's
// buffers); mimalloc's thread-local free lists take about a tenth off its CPU per request
// compared with glibc's malloc (bench/serve.sh measures the server).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(ferry::server::main());
}
