//! `vffn`: train / eval / generate / forward / inspect / bench.
//!
//! Each subcommand lives in its own module; this file only parses arguments and turns errors into
//! one clear line on stderr with a non-zero exit code.

use clap::{Parser, Subcommand};

mod bench;
mod ckpt_io;
mod common;
mod eval;
mod export;
mod forward;
mod generate;
mod inspect;
mod metrics;
mod svg;
mod train;

#[derive(Parser, Debug)]
#[command(name = "vffn", version, about = "VersatileFFN on a from-scratch CPU tensor engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a model (default: tiny preset on the built-in corpus, a few minutes).
    Train(train::TrainArgs),
    /// Validation loss and bits per byte of a checkpoint.
    Eval(eval::EvalArgs),
    /// Stream sampled bytes from a checkpoint.
    Generate(generate::GenerateArgs),
    /// Routing statistics of a checkpoint: depth histograms, expert load, λ, realized FLOPs.
    Inspect(inspect::InspectArgs),
    /// One forward pass over a text: logits, routing (and loss, gradients) as safetensors.
    Forward(forward::ForwardArgs),
    /// A checkpoint's model as one safetensors file of f32, bf16 or f16 tensors.
    Export(export::ExportArgs),
    /// Benchmarks: GEMM, FFN paths, training and decoding throughput.
    Bench(bench::BenchArgs),
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version go to stdout as usual; a usage error is its first line only.
        Err(err) if !err.use_stderr() => err.exit(),
        Err(err) => {
            let text = err.to_string();
            eprintln!("{}", text.lines().next().unwrap_or("error: bad arguments"));
            std::process::exit(2);
        }
    };
    let result = match cli.command {
        Command::Train(args) => train::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Forward(args) => forward::run(args),
        Command::Export(args) => export::run(args),
        Command::Bench(args) => bench::run(args),
    };
    if let Err(err) = result {
        // One line: the error and its causes, joined; multi-line messages folded.
        let text = format!("{err:#}");
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        eprintln!("error: {}", lines.join(" "));
        std::process::exit(1);
    }
}
