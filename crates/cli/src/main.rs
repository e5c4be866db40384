//! `vffn`: train / eval / generate / forward / inspect / bench.
//!
//! Each subcommand lives in its own module; this file only parses arguments and turns errors into
//! one clear line on stderr with a non-zero exit code.

use clap::{Parser, Subcommand};

#[macro_use]
mod out;

mod bench;
mod ckpt_io;
mod common;
mod eval;
mod export;
mod forward;
mod generate;
mod inspect;
mod lock;
mod metrics;
mod signals;
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
        // Clap's own messages (usage errors, help, version) are printed whole: they name the
        // missing argument or list the possible values. Printing them never panics.
        Err(err) => {
            let _ = err.print();
            std::process::exit(err.exit_code());
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
    let code = match result {
        Ok(()) if out::stdout_failed() => {
            errln!("error: cannot write to stdout");
            1
        }
        Ok(()) => 0,
        Err(err) => {
            errln!("error: {}", one_line(&err));
            1
        }
    };
    // A run stopped by SIGTERM saved its checkpoint and ends with 143 (128 + 15), as shells do.
    std::process::exit(if code == 0 { signals::exit_code() } else { code });
}

/// The error and its causes on one line, each said once: a cause whose text its parent message
/// already contains (a library error that prints its source) is not repeated.
fn one_line(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string();
        let text: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let text = text.join(" ");
        if !text.is_empty() && !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}
