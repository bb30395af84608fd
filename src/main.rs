//! The `mirrorlab` binary: see `mirrorlab --help`. Everything lives in the library.

fn main() -> std::process::ExitCode {
    mirrorlab::cli::main()
}
