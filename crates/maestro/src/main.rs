//! The `maestro` binary. `maestro serve` (the HTTP API) is being built; until it
//! lands this binary says so and exits, and Maestro is used as a library
//! (`maestro-engine`).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version") | Some("-V") => println!("maestro {}", env!("CARGO_PKG_VERSION")),
        _ => {
            eprintln!(
                "maestro {}: the HTTP server (`maestro serve`) is not built yet; \
                 use the maestro-engine library (see README.md)",
                env!("CARGO_PKG_VERSION")
            );
            std::process::exit(2);
        }
    }
}
