"""Continue a vffn run with PyTorch, on one process or many (torchrun), and hand it back.

    torchrun --nproc_per_node N -m vffn_torch.train --init RUN --data FILE --steps S --out RUN2

- Reads RUN's checkpoint: weights, AdamW moments, step, recipe (`[train]`) and data position.
- Runs S more optimizer steps with vffn's recipe: AdamW (β1, β2, ε, weight decay on matrices
  only), warm-up then cosine to min_lr_ratio·lr over the run's planned steps (now step + S),
  global gradient-norm clip, the depth router's temperature schedule and the balance loss
  (f_e of the whole batch, all-reduced over ranks).
- Data: the same batches vffn would draw next (its RNG is reproduced here); each step's batch
  of B windows is split by rows over the ranks, and each rank's loss is weighted by its share,
  so the averaged gradient is the gradient of vffn's whole-batch objective.
- Distributed: DistributedDataParallel (gloo on CPU, NCCL on GPU); FSDP instead when CUDA is
  present (--fsdp auto), or on request.
- Writes RUN2/ckpt in vffn's format (weights, moments, state.json with the step advanced and
  the data position), RUN2/config.toml and RUN2/metrics.jsonl (vffn's rows, with the depth
  router's per-layer `depth_agree` / `depth_margin` over the whole batch of the logged step where
  the model has a depth router), then evaluates RUN2 on the whole validation split in
  inference mode, as `vffn eval --checkpoint RUN2` does, and prints
  `{"step": .., "val_loss": .., "tokens": ..}` on stdout.
What is not carried over: the Gumbel noise stream (drawn here with torch generators; with
`depth_noise = "scaled"` it is scaled by the temperature as in vffn).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time

import torch
import torch.distributed as dist
from torch import nn

from .checkpoint import (
    CKPT_DIR,
    DATA_SALT,
    LOCK_FILE,
    CheckpointError,
    check_run_dir,
    load_training,
    run_lock,
    save,
    write_atomic,
)
from .config import TrainConfig, f32, f32_text, f64_text
from .data import Batcher, DataError, load_dataset, validation_windows
from .model import VffnModel, depth_agreement
from .rng import Rng

METRICS_FILE = "metrics.jsonl"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m vffn_torch.train", description=__doc__.split("\n")[0])
    p.add_argument("--init", required=True, help="vffn run/ckpt directory or model.safetensors")
    p.add_argument("--data", help="data file (default: vffn's built-in corpus)")
    p.add_argument("--steps", type=int, required=True, help="optimizer steps to run")
    p.add_argument("--out", required=True, help="run directory to write (vffn reads it back)")
    p.add_argument("--batch-size", type=int,
                   help="sequences per optimizer step over all ranks (default: the run's batch_size; "
                        "saved into the checkpoint's config)")
    p.add_argument("--threads", type=int, help="torch threads per process (default: cores / local ranks)")
    p.add_argument("--fsdp", choices=["auto", "on", "off"], default="auto",
                   help="FSDP instead of DDP (auto: when CUDA is present)")
    p.add_argument("--seed", type=int, help="seed of the Gumbel noise (default: the run's seed)")
    p.add_argument("--eval-windows", type=int, default=0,
                   help="validation windows of the final evaluation (0 = all, as `vffn eval`)")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be at least 1")
    if args.batch_size is not None and args.batch_size < 1:
        p.error("--batch-size must be at least 1")
    return args


class Distributed:
    """Rank, world size and device; a single process when not launched by torchrun."""

    def __init__(self):
        self.enabled = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
        self.cuda = torch.cuda.is_available()
        if self.enabled:
            dist.init_process_group(backend="nccl" if self.cuda else "gloo")
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
            self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
            self.local_world = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
        else:
            self.rank, self.world, self.local_rank, self.local_world = 0, 1, 0, 1
        if self.cuda:
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            device_tensor = tensor.to(self.device)
            dist.all_reduce(device_tensor)
            return device_tensor.to(tensor.device)
        return tensor

    def log(self, text: str) -> None:
        if self.rank == 0:
            print(text, file=sys.stderr, flush=True)


class TrainStep(nn.Module):
    """The whole objective in one forward (what DDP wraps): the batch's f_e are all-reduced
    inside, and the loss is weighted by this rank's share of the batch rows."""

    def __init__(self, model: VffnModel, dist_info: Distributed):
        super().__init__()
        self.model = model
        self.dist = dist_info

    def forward(self, windows, temperature: float, noise, weight: float):
        # -> (weighted loss, loss, ce, balance, depth agreement sums of this rank [L, 3])
        out = self.model(windows[:, :-1], infer=False, temperature=temperature, noise=noise)
        counts = [self.dist.all_sum(term.counts.clone()) for term in out.balance]
        loss, ce, balance = self.model.loss(out, windows[:, 1:], counts)
        return loss * weight, loss.detach(), ce.detach(), balance.detach(), depth_agreement(out)


def build_optimizer(model: VffnModel, train: TrainConfig, moments, step: int):
    """torch AdamW with vffn's hyper-parameters: one group of matrices (decayed), one of norm
    gains; vffn's moments become exp_avg / exp_avg_sq and its step count `step`."""
    # (FSDP inserts `_fsdp_wrapped_module.` into the names of the blocks it wraps.)
    params = {n.replace("_fsdp_wrapped_module.", ""): p for n, p in model.named_parameters()}
    decay, no_decay = [], []
    for name, _, decays in model.config.param_specs():
        (decay if decays else no_decay).append(params[name])
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": f32(train.weight_decay)},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=f32(train.lr),
        betas=(f32(train.beta1), f32(train.beta2)),
        eps=f32(train.eps),
        foreach=False,
    )
    if moments is not None and step > 0:
        for name, _, _ in model.config.param_specs():
            p = params[name]
            m, v = moments[name]
            optimizer.state[p] = {
                "step": torch.tensor(float(step)),
                "exp_avg": m.to(device=p.device, dtype=p.dtype).clone(),
                "exp_avg_sq": v.to(device=p.device, dtype=p.dtype).clone(),
            }
    return optimizer


def moments_of(model: VffnModel, optimizer) -> dict:
    """name -> (adam_m, adam_v) of every parameter (zeros where the optimizer has none yet)."""
    out = {}
    for name, p in model.named_parameters():
        state = optimizer.state.get(p, {})
        m = state.get("exp_avg", torch.zeros_like(p))
        v = state.get("exp_avg_sq", torch.zeros_like(p))
        out[name] = (m.detach().float().cpu(), v.detach().float().cpu())
    return out


def fsdp_wrap(step_module: TrainStep, d: Distributed):
    """FSDP with one unit per block; use_orig_params keeps the checkpoint's parameter names."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from .model import Block

    return FSDP(
        step_module, auto_wrap_policy=ModuleWrapPolicy({Block}), use_orig_params=True, device_id=d.device
    )


def fsdp_load_moments(wrapped, optimizer, cfg, moments: dict, step: int) -> None:
    """vffn's moments as the full optimizer state keyed by parameter name, sharded by FSDP."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    specs = cfg.param_specs()
    groups = optimizer.state_dict()["param_groups"]
    groups[0]["params"] = [f"model.{n}" for n, _, decays in specs if decays]
    groups[1]["params"] = [f"model.{n}" for n, _, decays in specs if not decays]
    state = {
        f"model.{name}": {"step": torch.tensor(float(step)), "exp_avg": moments[name][0],
                          "exp_avg_sq": moments[name][1]}
        for name, _, _ in specs
    }
    set_optimizer_state_dict(
        wrapped, optimizer, {"state": state, "param_groups": groups},
        options=StateDictOptions(full_state_dict=True),
    )


def fsdp_full_state(wrapped, optimizer, cfg):
    """(an unsharded f32 VffnModel, name -> (adam_m, adam_v)) on every rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    params, osd = get_state_dict(
        wrapped, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=False)
    )
    full = VffnModel(cfg)
    full.load_state_dict({k.removeprefix("model."): v.float().cpu() for k, v in params.items()})
    moments = {
        k.removeprefix("model."): (s["exp_avg"].float().cpu().clone(), s["exp_avg_sq"].float().cpu().clone())
        for k, s in osd["state"].items()
    }
    return full, moments


def clip_gradients(model: nn.Module, max_norm: float) -> float:
    """vffn's clip: the global L2 norm (f64 sum), gradients scaled by max_norm/(norm + 1e-6)
    only when the norm exceeds max_norm (0 disables). Returns the norm before clipping."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))
    if max_norm > 0 and math.isfinite(norm) and norm > max_norm:
        scale = f32(max_norm) / f32(norm + 1e-6)
        for g in grads:
            g.mul_(scale)
    return norm


def evaluate(model: VffnModel, val: bytes, dist_info: Distributed, limit: int = 0):
    """Mean next-byte CE (nats) in inference mode over the validation windows, as `vffn eval`
    (windows shared out over the ranks, the sums all-reduced). -> (loss, tokens)"""
    cfg = model.config
    windows = validation_windows(val, cfg.seq_len)
    if limit:
        windows = windows[:limit]
    mine = torch.from_numpy(windows[dist_info.rank :: dist_info.world]).to(dist_info.device)
    total, count = model.eval_loss_sum(mine, cfg.batch_size)
    sums = dist_info.all_sum(torch.tensor([total, float(count)], dtype=torch.float64))
    return float(sums[0] / sums[1]), int(sums[1])


# A metrics.jsonl row: vffn's MetricsRow fields in order; val_loss and the depth router's
# per-layer lists optional; f32 numbers but tokens_per_s and the lists' (f64).
METRICS_FIELDS = ("step", "loss", "ce", "balance", "val_loss", "lr", "temperature", "tokens_per_s", "grad_norm",
                  "depth_agree", "depth_margin")
OPTIONAL_FIELDS = ("val_loss", "depth_agree", "depth_margin")
F64_FIELDS = ("tokens_per_s", "depth_agree", "depth_margin")


def metrics_line(row: dict) -> str:
    """One metrics.jsonl line as vffn writes it (serde_json: field order, shortest digits)."""
    parts = []
    for key in METRICS_FIELDS:
        if key not in row:
            continue
        value = row[key]
        number = f64_text if key in F64_FIELDS else f32_text
        if key == "step":
            text = str(value)
        elif isinstance(value, list):
            text = "[" + ",".join(number(float(v)) for v in value) + "]"
        else:
            text = number(float(value))
        parts.append(f'"{key}":{text}')
    return "{" + ",".join(parts) + "}\n"


def depth_router_columns(sums: torch.Tensor) -> dict:
    """The `depth_agree` / `depth_margin` fields of a row from the whole batch's per-layer
    [tokens, agree, margin sum] (as vffn: none for a model without a depth router)."""
    routed = sums[sums[:, 0] > 0]
    if routed.numel() == 0:
        return {}
    tokens = routed[:, 0]
    return {"depth_agree": (routed[:, 1] / tokens).tolist(), "depth_margin": (routed[:, 2] / tokens).tolist()}


def _metrics_row(line: str):
    """The row of one line, or None when it is not one vffn would read."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    if not (isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] >= 0):
        return None
    numbers = all(isinstance(row.get(k), (int, float)) for k in METRICS_FIELDS
                  if k != "step" and k not in OPTIONAL_FIELDS)
    return row if numbers else None


def metrics_up_to(init: str, step: int) -> str:
    """The metrics.jsonl lines of RUN (the run directory of --init) for steps <= `step`, as
    vffn keeps them on resume: a line that is not a row is an error naming it, except a last
    line cut short by a crash (no newline), which is dropped."""
    run_dir = init
    for _ in range(2):
        if os.path.isfile(os.path.join(run_dir, METRICS_FILE)):
            break
        run_dir = os.path.dirname(os.path.abspath(run_dir))
    source = os.path.join(run_dir, METRICS_FILE)
    if not os.path.exists(source):
        return ""
    with open(source, "rb") as f:
        data = f.read()
    kept = []
    for index, line in enumerate(data.splitlines(keepends=True)):
        terminated = line.endswith(b"\n")
        try:
            row = _metrics_row(line.decode("utf-8"))
        except UnicodeDecodeError:
            row = None
        if row is None:
            if not terminated:
                break
            raise CheckpointError(f"`{source}`: line {index + 1} is not a metrics row (fix or remove the line)")
        if row["step"] > step:
            break
        kept.append(line.decode("utf-8").rstrip("\n") + "\n")
    return "".join(kept)


def main(argv=None) -> int:
    args = parse_args(argv)
    d = Distributed()
    created = d.rank == 0 and not os.path.exists(args.out)
    try:
        with contextlib.ExitStack() as held:
            if d.rank == 0:
                # One process per run directory, as `vffn train`: RUN2/lock is held to the end.
                check_run_dir(args.out)
                os.makedirs(args.out, exist_ok=True)
                held.enter_context(run_lock(args.out))
            return run(args, d)
    except BaseException:
        if created and os.path.isdir(args.out) and os.listdir(args.out) == [LOCK_FILE]:
            # A failed run leaves no directory it created behind (as vffn).
            os.remove(os.path.join(args.out, LOCK_FILE))
            os.rmdir(args.out)
        raise


def run(args, d: Distributed) -> int:
    """The training run of `main`, with the output directory locked (rank 0)."""
    threads = args.threads or max(1, (os.cpu_count() or 1) // d.local_world)
    torch.set_num_threads(threads)
    ckpt = load_training(args.init)
    model, start = ckpt.model, ckpt.step
    cfg = model.config
    if args.batch_size is not None:
        cfg.batch_size = args.batch_size
    if cfg.batch_size < d.world:
        raise SystemExit(f"error: batch of {cfg.batch_size} sequences cannot be split over {d.world} ranks "
                         "(raise --batch-size)")
    state = ckpt.state
    train = TrainConfig.from_dict(state["train"]) if state else TrainConfig()
    train.steps = start + args.steps  # the schedules' planned total, as `vffn train --resume --steps`
    train_bytes, val_bytes, source = load_dataset(args.data, cfg.seq_len)
    if state and state["data_source"] == source:
        data_rng = Rng.from_state(int(w) for w in state["data_rng"])
        data_note = "continuing its data position"
    else:
        data_rng = Rng(train.seed ^ DATA_SALT)
        data_note = "new data: batches from the start of the seed's stream"
    batcher = Batcher(train_bytes, cfg.seq_len, cfg.batch_size, data_rng)
    noise_words = [int(w) for w in state["model_rng"]] if state else Rng(train.seed).state
    noise_seed = args.seed if args.seed is not None else noise_words[0] ^ start
    noise = torch.Generator().manual_seed((noise_seed * 1_000_003 + d.rank) % (1 << 63))

    model.to(d.device)
    use_fsdp = args.fsdp == "on" or (args.fsdp == "auto" and d.cuda and d.enabled)
    step_module = TrainStep(model, d)
    optimizer = None
    if use_fsdp:
        if not d.enabled:
            raise SystemExit("error: --fsdp needs torchrun with more than one process")
        wrapped = fsdp_wrap(step_module, d)
        optimizer = build_optimizer(model, train, None, 0)
        if ckpt.moments is not None and start > 0:
            fsdp_load_moments(wrapped, optimizer, cfg, ckpt.moments, start)
    elif d.enabled:
        # Every parameter takes part in every step, except a router an ablation switches off.
        unused = cfg.block == "versatile" and cfg.paths != "both"
        wrapped = nn.parallel.DistributedDataParallel(
            step_module,
            device_ids=[d.local_rank] if d.cuda else None,
            find_unused_parameters=unused,
        )
    else:
        wrapped = step_module
    if optimizer is None:
        optimizer = build_optimizer(model, train, ckpt.moments, start)

    d.log(
        f"vffn_torch: {cfg.block} model ({sum(math.prod(shape) for _, shape, _ in cfg.param_specs())} parameters) "
        f"from {args.init} at step {start}, {args.steps} steps on {source} ({data_note}), "
        f"{d.world} process(es) ({'FSDP' if use_fsdp else 'DDP' if d.enabled else 'single'}, "
        f"{d.device.type}, {threads} threads each), batch {cfg.batch_size}x{cfg.seq_len}"
    )
    earlier_metrics = metrics_up_to(args.init, start) if d.rank == 0 else ""
    rows = [d.rank * cfg.batch_size // d.world, (d.rank + 1) * cfg.batch_size // d.world]
    weight = (rows[1] - rows[0]) * d.world / cfg.batch_size
    step, tokens_seen = start, int(state["tokens_seen"]) if state else 0
    metrics = []
    window_tokens, window_time = 0, 0.0
    wrapped.train()
    for _ in range(args.steps):
        began = time.perf_counter()
        windows = batcher.windows(batcher.next_starts())  # every rank draws the whole batch
        mine = torch.from_numpy(windows[rows[0] : rows[1]]).to(d.device)
        lr = train.lr_at(step)
        temperature = cfg.temperature_at(step, train.steps, train.temperature_floor_frac)
        for group in optimizer.param_groups:
            group["lr"] = lr
        scaled, loss, ce, balance, agreement = wrapped(mine, temperature, noise, weight)
        scaled.backward()
        if use_fsdp:
            grad_norm = float(wrapped.clip_grad_norm_(f32(train.grad_clip) if train.grad_clip > 0 else float("inf")))
        else:
            grad_norm = clip_gradients(model, f32(train.grad_clip))
        if not math.isfinite(grad_norm):
            raise SystemExit(f"error: gradient norm is {grad_norm} at step {step + 1}: training stopped")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        share = (rows[1] - rows[0]) / cfg.batch_size
        values = d.all_sum(torch.stack([loss, ce, balance]).double().cpu() * share)
        step += 1
        tokens_seen += cfg.batch_size * cfg.seq_len
        window_time += time.perf_counter() - began
        window_tokens += cfg.batch_size * cfg.seq_len
        if step % train.log_every == 0 or step == train.steps:
            row = {
                "step": step, "loss": float(values[0]), "ce": float(values[1]),
                "balance": float(values[2]), "lr": lr, "temperature": temperature,
                "tokens_per_s": window_tokens / max(window_time, 1e-9), "grad_norm": grad_norm,
            }
            if agreement.numel():  # models with a depth router, as vffn's rows
                row |= depth_router_columns(d.all_sum(agreement.cpu()))
            metrics.append(row)
            d.log(f"step {step}: loss {row['loss']:.4f} lr {lr:.3e} T {temperature:.3f} "
                  f"grad norm {grad_norm:.3f} {row['tokens_per_s']:.0f} tok/s")
            window_tokens, window_time = 0, 0.0

    # Gather what the checkpoint needs on every rank (FSDP: full tensors), then rank 0 writes.
    if use_fsdp:
        saved, moments = fsdp_full_state(wrapped, optimizer, cfg)
    else:
        moments = moments_of(model, optimizer)
        saved = model
    temperature = cfg.temperature_at(step, train.steps, train.temperature_floor_frac)
    noise_rng = Rng.from_state(noise_words)
    next_noise = Rng(noise_rng.next_u64() ^ step)  # a fresh vffn noise stream for a resume
    if d.rank == 0:
        final = save(
            saved.cpu() if not use_fsdp else saved, args.out, step=step, moments=moments,
            train=train, temperature=temperature, data_source=source,
            data_rng=batcher.rng.state, model_rng=next_noise.state, tokens_seen=tokens_seen,
        )
        d.log(f"checkpoint at step {step} written to {final}")
    if d.enabled:
        dist.barrier()
    # The trainer's own evaluation, of the weights as written (f32), as `vffn eval` computes it.
    eval_model = saved.to(d.device).eval()
    val_loss, tokens = evaluate(eval_model, val_bytes, d, args.eval_windows)
    if d.rank == 0:
        if metrics:
            metrics[-1]["val_loss"] = val_loss
        text = earlier_metrics + "".join(metrics_line(row) for row in metrics)
        write_atomic(os.path.join(args.out, METRICS_FILE), text.encode())
        print(json.dumps({"step": step, "val_loss": val_loss, "tokens": tokens}), flush=True)
        d.log(f"done: step {step}, validation loss {val_loss:.6f} nats over {tokens} bytes "
              f"(vffn eval --checkpoint {os.path.join(args.out, CKPT_DIR)} computes the same)")
    if d.enabled:
        dist.barrier()
        dist.destroy_process_group()
    return 0


def cli() -> int:
    """main() with bad input (checkpoint, data, config) reported as one `error:` line."""
    try:
        return main()
    except (CheckpointError, DataError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(cli())
