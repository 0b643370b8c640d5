// The model server allocates and frees per request (the parsed tensors, the answer, hyper's
// buffers); mimalloc's thread-local free lists take about a tenth off its CPU per request
// compared with glibc's malloc (bench/serve.sh measures the server).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    #[cfg(feature = "cli")]
    let code = ferry::cli::main();
    // The serving image's build: nothing but the model server.
    #[cfg(not(feature = "cli"))]
    let code = ferry::server::main();
    std::process::exit(code);
}
