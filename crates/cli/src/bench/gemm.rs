//! `vffn bench gemm --m M --k K --n N [--threads T] [--trans-a] [--trans-b] [--json]`

use clap::Args;

#[derive(Args, Debug)]
pub struct GemmArgs {
    #[arg(long)]
    m: usize,
    #[arg(long)]
    k: usize,
    #[arg(long)]
    n: usize,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[arg(long)]
    trans_a: bool,
    #[arg(long)]
    trans_b: bool,
    #[arg(long)]
    json: bool,
}

pub fn run(args: GemmArgs) -> anyhow::Result<()> {
    anyhow::bail!("bench gemm is not implemented yet ({args:?})")
}
