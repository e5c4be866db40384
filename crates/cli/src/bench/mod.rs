//! `vffn bench …`: throughput measurements printed as text or one JSON line.

use clap::{Args, Subcommand};

mod ffn;
mod gemm;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchCommand,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// GFLOP/s of one GEMM shape (median over repeated runs).
    Gemm(gemm::GemmArgs),
    /// Median ms of the FFN kernels (dense, width, depth, naive baselines, training fwd+bwd).
    Ffn(ffn::FfnArgs),
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.what {
        BenchCommand::Gemm(a) => gemm::run(a),
        BenchCommand::Ffn(a) => ffn::run(a),
    }
}
