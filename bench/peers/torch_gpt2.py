#!/usr/bin/env python3
"""PyTorch peer for `fp8-trainer bench`: the same GPT-2 training step, timed in torch.

Trains GPT-2 exactly as Hugging Face's `GPT2LMHeadModel` computes it (written out nanoGPT style:
learned position embeddings, pre-norm blocks, causal SDPA, GELU tanh, LM head tied to `wte`,
dropout 0) with AdamW and gradient clipping on random tokens, and prints one JSON line per mode
with measured figures, then a table of them side by side. Each mode runs in a fresh subprocess
of this script (`--single MODE`), so peak RSS is that mode's alone.

Modes:
  eager-f32               float32 everywhere, eager
  torchao-float8-emulate  torchao.float8, tensorwise scaling, power-of-two scales, the four
                          projections of every block cast to float8 and multiplied in float32
                          (emulate=True; runs on the CPU)
  bf16-autocast           torch.autocast(device, bfloat16), float32 master weights (CPU and CUDA;
                          on the CPU, oneDNN's AVX512_BF16 GEMMs where the CPU has them)
  torchao-float8          (CUDA) as the emulated mode with real FP8 GEMMs (torch._scaled_mm,
                          emulate=False); needs compute capability 8.9 or newer

Everything runs eagerly (no torch.compile: torchao fuses its float8 casts only when compiled, so
its eager path is the unfused one), float32 matmul precision "highest" (no TF32). torchao's float8
is OCP e4m3fn (inputs, weights) / e5m2 (gradients) with scale max/amax rounded down to a power of
two and no margin, where ours is Graphcore's FP8-AMAX: the same GEMM shapes and casts per step,
not the same numerics.

Run by hand, never in CI (needs `pip install torch==2.15.0 torchao==0.18.0`), on the same machine
and with the same thread count as `fp8-trainer bench`:
  python bench/peers/torch_gpt2.py --preset bench-2x768 --threads 2 --out bench-2x768.json
  python bench/peers/torch_gpt2.py --preset quickstart  --threads 2 --out quickstart.json
  python bench/peers/torch_gpt2.py --preset gpt2-124m   --threads 2 --steps 5 --warmup 1 --out gpt2-124m.json
  python bench/peers/torch_gpt2.py --preset gpt2-124m --device cuda --out gpt2-124m-cuda.json
Explicit shape flags override the preset's (`--preset quickstart --batch 16`).

Measured: time.perf_counter around each whole step (forward, loss, backward, clip, AdamW step,
zero_grad; CUDA synchronized before the clock stops); the batch is drawn before the clock
starts. tokens_per_s = B*T / median step time. peak_rss_mb = ru_maxrss of the mode's process
after the timed steps. For eager-f32 two more profiled steps estimate the share of time spent in
GEMM ops (CPU self time on the CPU, CUDA kernel time on CUDA).
"""
import argparse
import contextlib
import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import time
import traceback
from importlib import metadata

# Shapes of `fp8-trainer bench`'s presets. n_inner None = 4 * n_embd; n_positions is --seq
# unless given.
PRESETS = {
    "bench-2x768": dict(vocab=50257, n_layer=2, n_embd=768, n_head=12, seq=256, batch=4),
    "quickstart": dict(vocab=257, n_layer=4, n_embd=128, n_head=4, seq=128, batch=8, n_inner=512),
    "gpt2-124m": dict(vocab=50257, n_layer=12, n_embd=768, n_head=12, seq=1024, batch=1),
}
SHAPE_KEYS = ("vocab", "n_layer", "n_embd", "n_head", "n_inner", "n_positions", "seq", "batch")
CPU_MODES = ("eager-f32", "bf16-autocast", "torchao-float8-emulate")
CUDA_MODES = ("eager-f32", "bf16-autocast", "torchao-float8-emulate", "torchao-float8")
FLOAT8_MODES = ("torchao-float8-emulate", "torchao-float8")

# Training hyperparameters: nanoGPT's GPT-2 recipe, the same as the Rust bench's.
SEED = 1337  # model init and the token stream; the same in every mode
LR = 6e-4  # constant, no schedule
BETAS = (0.9, 0.95)
EPS = 1e-8
WEIGHT_DECAY = 0.1  # on params with dim >= 2 (matrices, embeddings); 0 on biases and LayerNorms
GRAD_CLIP = 1.0
INIT_STD = 0.02  # GPT2Config.initializer_range
LN_EPS = 1e-5  # GPT2Config.layer_norm_epsilon
# Block projections that float8 replaces (and nothing else: the tied LM head is a matmul).
FLOAT8_FQN = re.compile(r"h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)")
# Ops whose time counts as GEMM in the eager-f32 estimate.
GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")
PROFILE_STEPS = 2


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), help="shapes of a fp8-trainer bench preset")
    p.add_argument("--vocab", type=int)
    p.add_argument("--n-layer", type=int)
    p.add_argument("--n-embd", type=int)
    p.add_argument("--n-head", type=int)
    p.add_argument("--n-inner", type=int, help="MLP width (default 4 * n_embd)")
    p.add_argument("--n-positions", type=int, help="rows of wpe (default --seq)")
    p.add_argument("--seq", type=int, help="T, tokens per sequence")
    p.add_argument("--batch", type=int, help="B, sequences per step")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--modes", help="comma list (default: every mode of the device): "
                   f"cpu {','.join(CPU_MODES)}; cuda {','.join(CUDA_MODES)}")
    p.add_argument("--out", help="write all results as JSON here")
    p.add_argument("--single", metavar="MODE", help=argparse.SUPPRESS)  # the child process
    args = p.parse_args()

    preset = PRESETS.get(args.preset, {})
    for key in SHAPE_KEYS:
        if getattr(args, key) is None:
            setattr(args, key, preset.get(key))
    if args.n_inner is None and args.n_embd is not None:
        args.n_inner = 4 * args.n_embd
    if args.n_positions is None:
        args.n_positions = args.seq
    missing = [k for k in SHAPE_KEYS if getattr(args, k) is None]
    if missing:
        p.error(f"missing {', '.join('--' + k.replace('_', '-') for k in missing)} (or give --preset)")
    if args.n_embd % args.n_head:
        p.error(f"--n-embd {args.n_embd} is not a multiple of --n-head {args.n_head}")
    if args.seq > args.n_positions:
        p.error(f"--seq {args.seq} exceeds --n-positions {args.n_positions}")
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")

    allowed = CUDA_MODES if args.device == "cuda" else CPU_MODES
    modes = [args.single] if args.single else (args.modes.split(",") if args.modes else list(allowed))
    for mode in modes:
        if mode not in allowed:
            p.error(f"mode {mode!r} is not one of {', '.join(allowed)} on --device {args.device}")
    args.mode_list = modes
    return args


# Parse before importing torch: OMP_NUM_THREADS / MKL_NUM_THREADS are read when torch loads.
ARGS = parse_args()
if ARGS.threads is not None:
    os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)
    os.environ["MKL_NUM_THREADS"] = str(ARGS.threads)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402


# ----------------------------------------------------------------------------------------------
# GPT-2 (modeling_gpt2.py's GPT2LMHeadModel; Conv1D written as nn.Linear, the same function)


class CausalSelfAttention(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.n_head = a.n_head
        self.c_attn = nn.Linear(a.n_embd, 3 * a.n_embd)  # q, k, v
        self.c_proj = nn.Linear(a.n_embd, a.n_embd)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        # scale 1/sqrt(hs), as GPT2Attention (scale_attn_weights=True)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.c_fc = nn.Linear(a.n_embd, a.n_inner)
        self.c_proj = nn.Linear(a.n_inner, a.n_embd)

    def forward(self, x):
        # GPT-2's activation_function "gelu_new" is GELU's tanh approximation
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.ln_1 = nn.LayerNorm(a.n_embd, eps=LN_EPS)
        self.attn = CausalSelfAttention(a)
        self.ln_2 = nn.LayerNorm(a.n_embd, eps=LN_EPS)
        self.mlp = MLP(a)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.wte = nn.Embedding(a.vocab, a.n_embd)
        self.wpe = nn.Embedding(a.n_positions, a.n_embd)
        self.h = nn.ModuleList(Block(a) for _ in range(a.n_layer))
        self.ln_f = nn.LayerNorm(a.n_embd, eps=LN_EPS)
        # nanoGPT / GPT2PreTrainedModel._init_weights: N(0, 0.02), biases 0, LayerNorm (1, 0);
        # residual projections scaled by 1/sqrt(2 * n_layer) (GPT-2 paper, section 2.3)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, INIT_STD / math.sqrt(2 * a.n_layer))
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() >= 2:
                nn.init.normal_(p, 0.0, INIT_STD)
            # LayerNorm weights keep their init, 1

    def forward(self, idx, targets):
        B, T = idx.shape
        pos = torch.arange(T, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)  # (B, T, C)
        for block in self.h:
            x = block(x)
        x = self.ln_f(x)
        # LM head tied to wte: a functional matmul, not an nn.Linear, so float8 leaves it alone
        logits = F.linear(x, self.wte.weight)  # (B, T, V)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


# ----------------------------------------------------------------------------------------------
# One mode, in this process


def convert_float8(model, emulate):
    """torchao.float8 with the default (tensorwise, dynamic) recipe on the block projections."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    from torchao.float8.float8_linear import Float8Linear

    config = Float8LinearConfig(emulate=emulate, round_scales_to_power_of_2=True)
    convert_to_float8_training(
        model, config=config, module_filter_fn=lambda mod, fqn: bool(FLOAT8_FQN.fullmatch(fqn))
    )
    converted = [n for n, m in model.named_modules() if isinstance(m, Float8Linear)]
    left = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    expected = [f"h.{i}.{s}" for i in range(ARGS.n_layer)
                for s in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    assert sorted(converted) == sorted(expected), f"converted {converted}, expected {expected}"
    assert not left, f"nn.Linear left unconverted: {left}"
    print(f"[{ARGS.single}] float8: converted {len(converted)} Linear modules: "
          f"{', '.join(converted)}", file=sys.stderr)
    info = dict(
        converted_linears=len(converted),
        recipe="tensorwise",
        emulate=config.emulate,
        round_scales_to_power_of_2=config.round_scales_to_power_of_2,
        dtypes=dict(input=str(config.cast_config_input.target_dtype),
                    weight=str(config.cast_config_weight.target_dtype),
                    grad_output=str(config.cast_config_grad_output.target_dtype)),
    )
    return info


def make_optimizer(model):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [dict(params=decay, weight_decay=WEIGHT_DECAY), dict(params=no_decay, weight_decay=0.0)]
    return torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS)  # foreach: torch's default


def gemm_share(step, device):
    """Fraction of profiled self time in GEMM ops over PROFILE_STEPS steps (an estimate)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(PROFILE_STEPS):
            step()
    events = prof.key_averages()
    attr = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    total = sum(getattr(e, attr) for e in events)
    gemm = sum(getattr(e, attr) for e in events if e.key in GEMM_OPS)
    return dict(
        gemm_share_estimate=gemm / total if total else None,
        gemm_share_basis=("CUDA kernel self time" if device == "cuda" else "CPU self time")
        + f" of {', '.join(GEMM_OPS)} over {PROFILE_STEPS} profiled steps (estimate)",
    )


def run_single(mode):
    a = ARGS
    result = dict(mode=mode, device=a.device)
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    cuda = a.device == "cuda"
    if cuda:
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda but torch.cuda.is_available() is False")
        result["device_name"] = torch.cuda.get_device_name()
        if mode == "torchao-float8":
            cap = torch.cuda.get_device_capability()
            if cap < (8, 9):
                raise RuntimeError(f"{result['device_name']} (sm_{cap[0]}{cap[1]}) has no FP8 "
                                   "tensor cores; torchao-float8 needs compute capability >= 8.9")

    # torch's own libraries (the CUDA ones too, in a CUDA wheel) before any tensor, to tell
    # torch's footprint from the training step's in peak_rss_mb
    result["rss_before_model_mb"] = peak_rss_mb()
    torch.manual_seed(SEED)
    model = GPT(a).to(dev)
    result["params"] = sum(p.numel() for p in model.parameters())  # wte counted once (tied)
    if mode in FLOAT8_MODES:
        try:
            import torchao.float8  # noqa: F401
        except ImportError as e:
            raise RuntimeError(f"torchao is unavailable ({e}); pip install torchao==0.18.0") from e
        result["float8"] = convert_float8(model, emulate=(mode == "torchao-float8-emulate"))
    opt = make_optimizer(model)
    # model and optimizer built, no step yet (AdamW's state comes at the first step). Building
    # the optimizer imports torch._dynamo, sympy and triton (~900 modules, ~160 MB in 2.15).
    result["rss_after_setup_mb"] = peak_rss_mb()
    def autocast():  # a fresh context per step
        if mode == "bf16-autocast":
            return torch.autocast(a.device, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    gen = torch.Generator().manual_seed(SEED)  # the token stream, on the CPU for every device
    B, T = a.batch, a.seq

    def batch():
        # llm.c-style window: B*T+1 tokens, inputs the first B*T, targets the last B*T
        buf = torch.randint(0, a.vocab, (B * T + 1,), generator=gen).to(dev)
        return buf[:-1].view(B, T), buf[1:].view(B, T)

    def step(x=None, y=None):
        if x is None:
            x, y = batch()
        with autocast():
            loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    losses, times = [], []
    for i in range(a.warmup + a.steps):
        x, y = batch()
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = step(x, y)
        if cuda:
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        losses.append(loss.item())
        if i >= a.warmup:
            times.append(t1 - t0)
        print(f"[{mode}] step {i}{' (warmup)' if i < a.warmup else ''}: loss {losses[-1]:.4f} "
              f"{(t1 - t0) * 1e3:.1f} ms", file=sys.stderr)
    rss = peak_rss_mb()

    median = statistics.median(times)
    result.update(
        threads=torch.get_num_threads(),
        shapes={k: getattr(a, k) for k in SHAPE_KEYS},
        steps=a.steps,
        warmup=a.warmup,
        step_time_median_s=median,
        step_time_mean_s=statistics.fmean(times),
        step_times_s=times,
        tokens_per_s=B * T / median,
        peak_rss_mb=rss,
        loss_first=losses[0],
        loss_last=losses[-1],
        loss_expected_at_init=math.log(a.vocab),
        float32_matmul_precision=torch.get_float32_matmul_precision(),
        torch_version=torch.__version__,
        torchao_version=package_version("torchao"),
    )
    if cuda:
        result["cuda_max_memory_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        # what fp8-trainer bench reads for its own process too: memory held, pool included
        result["nvidia_smi_used_mb"] = nvidia_smi_process_mb()
    if mode == "eager-f32":
        result.update(gemm_share(step, a.device))
    return result


def nvidia_smi_process_mb():
    """GPU memory of this process according to nvidia-smi (MiB), or None."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        pid, _, mb = line.partition(",")
        if pid.strip() == str(os.getpid()):
            try:
                return float(mb)
            except ValueError:
                return None
    return None


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is KiB on Linux


def package_version(name):
    # importlib.metadata, not `import torchao`: importing it would add to the eager modes' RSS
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------------------------
# Every mode, each in a fresh child process


def child_argv(mode):
    argv = [sys.executable, os.path.abspath(__file__), "--single", mode, "--device", ARGS.device,
            "--steps", str(ARGS.steps), "--warmup", str(ARGS.warmup)]
    for key in SHAPE_KEYS:
        argv += ["--" + key.replace("_", "-"), str(getattr(ARGS, key))]
    if ARGS.threads is not None:
        argv += ["--threads", str(ARGS.threads)]
    return argv


def run_child(mode):
    print(f"== {mode}", file=sys.stderr, flush=True)
    proc = subprocess.run(child_argv(mode), stdout=subprocess.PIPE, text=True)  # stderr passes
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if lines:
        return json.loads(lines[-1])
    return dict(mode=mode, device=ARGS.device,
                error=f"child exited with status {proc.returncode} and printed no result")


def print_table(results):
    base = next((r for r in results if r["mode"] == "eager-f32" and "error" not in r), None)
    cuda = ARGS.device == "cuda"
    head = f"{'mode':<24}{'median s':>10}{'tokens/s':>11}{'vs f32':>8}{'RSS MB':>9}{'(torch)':>9}"
    head += f"{'CUDA MB':>9}" if cuda else ""
    print(head + f"{'loss first -> last':>22}{'GEMM share':>12}")
    for r in results:
        if "error" in r:
            print(f"{r['mode']:<24}error: {r['error']}")
            continue
        ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
        share = r.get("gemm_share_estimate")
        row = (f"{r['mode']:<24}{r['step_time_median_s']:>10.4f}{r['tokens_per_s']:>11.1f}"
               f"{ratio:>8}{r['peak_rss_mb']:>9.0f}{r['rss_before_model_mb']:>9.0f}")
        row += f"{r['cuda_max_memory_allocated_mb']:>9.0f}" if cuda else ""
        row += f"{r['loss_first']:>11.4f} -> {r['loss_last']:<7.4f}"
        row += f"{'~' + format(share, '.0%'):>12}" if share is not None else f"{'':>12}"
        print(row)


def main():
    if ARGS.single:
        try:
            result = run_single(ARGS.single)
        except Exception as e:  # one JSON line either way; the parent reports it
            traceback.print_exc()
            print(json.dumps(dict(mode=ARGS.single, device=ARGS.device,
                                  error=f"{type(e).__name__}: {e}")), flush=True)
            raise SystemExit(3)
        print(json.dumps(result), flush=True)
        return

    results = []
    for mode in ARGS.mode_list:
        results.append(run_child(mode))
        print(json.dumps(results[-1]), flush=True)
    shapes = ", ".join(f"{k} {getattr(ARGS, k)}" for k in SHAPE_KEYS)
    print(f"\n{ARGS.preset or 'custom'} ({shapes}) on {ARGS.device}, threads "
          f"{ARGS.threads if ARGS.threads is not None else 'default'}, {ARGS.steps} timed steps "
          f"after {ARGS.warmup} warmup")
    print_table(results)
    if ARGS.out:
        with open(ARGS.out, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
    if any("error" in r for r in results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
