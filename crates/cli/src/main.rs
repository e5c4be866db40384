//! `vffn`: train / eval / generate / forward / inspect / bench.
//!
//! Each subcommand lives in its own module; this file only parses arguments and turns errors into
//! one clear line on stderr with a non-zero exit code.

use clap::{Parser, Subcommand};

mod bench;

#[derive(Parser, Debug)]
#[command(name = "vffn", version, about = "VersatileFFN on a from-scratch CPU tensor engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Benchmarks: GEMM, FFN paths, training and decoding throughput.
    Bench(bench::BenchArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(args) => bench::run(args),
    };
    if let Err(err) = result {
        // One line: the error and its causes, joined.
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
