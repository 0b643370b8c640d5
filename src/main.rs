fn main() {
    #[cfg(feature = "cli")]
    let code = ferry::cli::main();
    // The serving image's build: nothing but the model server.
    #[cfg(not(feature = "cli"))]
    let code = ferry::server::main();
    std::process::exit(code);
}
