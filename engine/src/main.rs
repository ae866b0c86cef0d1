//! The `aleph-wasm` command: see [`aleph_wasm::cli`].

fn main() {
    std::process::exit(aleph_wasm::cli::main());
}
