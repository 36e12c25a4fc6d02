#!/usr/bin/env python3
"""PyTorch peer for `fp8-trainer bench`: the same Llama training step, timed in torch.

Trains a Llama-family model exactly as Hugging Face's `LlamaForCausalLM` computes it, written out
in plain torch nanoGPT style (no transformers import in the timed path; the module names are
Hugging Face's: model.embed_tokens, model.layers.N.self_attn.q_proj, ..., model.norm, lm_head):
token embedding, pre-norm decoder layers with RMSNorm (w * x * rsqrt(mean(x^2) + eps), eps 1e-5),
bias-free q/k/v/o projections, rotary embeddings (rotate_half form, theta 10000 unless the preset
or --rope-theta says otherwise, cos/sin computed once), grouped-query causal attention
(scaled_dot_product_attention with enable_gqa=True where torch has it, else repeat_kv), SwiGLU
MLP down(silu(gate(x)) * up(x)), final RMSNorm, an untied LM head (tied to embed_tokens with
--tie), dropout 0. AdamW and gradient clipping on random tokens. Prints one JSON line per mode
with measured figures, then a table of them side by side. Each mode runs in a fresh subprocess
of this script (`--single MODE`), so peak RSS is that mode's alone. `--check` instead compares
the model with transformers' LlamaForCausalLM on small random configs (logits, loss, gradients).

Modes:
  eager-f32               float32 everywhere, eager
  bf16-autocast           torch.autocast(device, bfloat16) with float32 master weights (CPU and
                          CUDA; on the CPU it needs a CPU with bf16 support to be fast)
  torchao-float8-emulate  torchao.float8, tensorwise scaling, power-of-two scales, the seven
                          projections of every layer (q/k/v/o_proj, gate/up/down_proj) cast to
                          float8 and multiplied in float32 (emulate=True; runs on the CPU);
                          never the embedding or the head
  torchao-float8          (CUDA) as the emulated mode with real FP8 GEMMs (torch._scaled_mm,
                          emulate=False); needs compute capability 8.9 or newer

Everything runs eagerly (no torch.compile: torchao fuses its float8 casts only when compiled, so
its eager path is the unfused one), float32 matmul precision "highest" (no TF32). torchao's float8
is OCP e4m3fn (inputs, weights) / e5m2 (gradients) with scale max/amax rounded down to a power of
two and no margin, where ours is Graphcore's FP8-AMAX: the same GEMM shapes and casts per step,
not the same numerics. Other differences from ours: the head (untied lm_head or tied
embed_tokens) is a plain f32 matmul in both eager-f32 and the float8 modes, but bf16-autocast
runs it, every projection and the attention (SDPA) in bf16, as autocast does (RMSNorm
statistics, softmax inside SDPA's kernel and the cross entropy stay f32); the rotary inverse
frequencies are transformers' f32 `1 / theta**(2i/d)` (ours computes the same in f32 with powf);
attention is torch's fused causal SDPA (the flash kernel on the CPU, GQA without copying K/V),
not our kernel, so its f32 rounding differs. Like transformers, the loss upcasts the logits to
f32 (a no-op outside autocast). `--check` measured against transformers 5.25.0 on the CPU: logits
within 7e-7 relative (max |diff| / max |logit|), loss within 1e-7, every gradient within 1.5e-6.

Run by hand, never in CI (needs `pip install torch==2.15.0 torchao==0.18.0`; `--check` also
needs transformers, written against 5.25.0), on the same machine and with the same thread count
as `fp8-trainer bench`:
  python bench/peers/torch_llama.py --check
  python bench/peers/torch_llama.py --preset llama-2x768      --threads 2 --out llama-2x768.json
  python bench/peers/torch_llama.py --preset llama-quickstart --threads 2 --out llama-quickstart.json
  python bench/peers/torch_llama.py --preset smollm2-135m     --threads 2 --steps 5 --warmup 1 --out smollm2.json
  python bench/peers/torch_llama.py --preset smollm2-135m --device cuda --out smollm2-cuda.json
  python bench/peers/torch_llama.py --preset smollm2-360m --lora-r 16 --modes eager-f32 --threads 2
With --lora-r, PEFT LoRA adapters (peft's inject_adapter_in_model, alpha 2r, dropout 0) on the
projections --lora-targets names (all seven by default), the rest frozen: PyTorch + PEFT's LoRA
fine-tuning step, the peer of a job with a `lora` section (needs `pip install peft`).
Explicit shape flags override the preset's (`--preset llama-quickstart --batch 16`, `--no-tie`).

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

# Shapes of `fp8-trainer bench`'s Llama presets (trainer/src/model/llama/presets.rs and
# configs/llama-quickstart.json). head_dim None = hidden / n_head.
PRESETS = {
    "llama-2x768": dict(vocab=32000, n_layer=2, hidden=768, n_head=12, n_kv_head=4,
                        intermediate=2048, seq=256, batch=4),
    "llama-quickstart": dict(vocab=257, n_layer=4, hidden=128, n_head=4, n_kv_head=2,
                             intermediate=352, seq=128, batch=8),
    # HuggingFaceTB/SmolLM2-135M: rope_theta 100000 and a tied head, as its config.json
    "smollm2-135m": dict(vocab=49152, n_layer=30, hidden=576, n_head=9, n_kv_head=3,
                         intermediate=1536, seq=512, batch=4, tie=True, rope_theta=100000.0),
    # HuggingFaceTB/SmolLM2-360M: 32 layers, 960 wide, 15 query / 5 key-value heads
    "smollm2-360m": dict(vocab=49152, n_layer=32, hidden=960, n_head=15, n_kv_head=5,
                         intermediate=2560, seq=512, batch=4, tie=True, rope_theta=100000.0),
}
SHAPE_KEYS = ("vocab", "n_layer", "hidden", "n_head", "n_kv_head", "head_dim", "intermediate",
              "seq", "batch")
ARCH_KEYS = ("rope_theta", "rms_eps", "tie")  # the rest of the model, with its defaults below
DEFAULTS = dict(rope_theta=10000.0, rms_eps=1e-5, tie=False)
CPU_MODES = ("eager-f32", "bf16-autocast", "torchao-float8-emulate")
CUDA_MODES = ("eager-f32", "bf16-autocast", "torchao-float8-emulate", "torchao-float8")
FLOAT8_MODES = ("torchao-float8-emulate", "torchao-float8")

# Training hyperparameters: the same recipe as the GPT-2 peer and the Rust bench.
SEED = 1337  # model init and the token stream; the same in every mode
LR = 6e-4  # constant, no schedule
BETAS = (0.9, 0.95)
EPS = 1e-8
WEIGHT_DECAY = 0.1  # on params with dim >= 2 (matrices, embeddings); 0 on RMSNorm weights
GRAD_CLIP = 1.0
INIT_STD = 0.02  # LlamaConfig.initializer_range
# Layer projections that float8 replaces (and nothing else: the head is a functional matmul).
PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
FLOAT8_FQN = re.compile(r"model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)")
# Ops whose time counts as GEMM in the eager-f32 estimate.
GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")
PROFILE_STEPS = 2
CHECK_RTOL = 1e-5  # --check: max |ours - transformers| / max |transformers|, logits and loss
CHECK_GRAD_RTOL = 1e-4  # --check: the same of every parameter's gradient (the worst one)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), help="shapes of a fp8-trainer bench preset")
    p.add_argument("--vocab", type=int)
    p.add_argument("--n-layer", type=int, help="decoder layers")
    p.add_argument("--hidden", type=int, help="hidden_size, the residual width")
    p.add_argument("--n-head", type=int, help="query heads")
    p.add_argument("--n-kv-head", type=int, help="key/value heads (num_key_value_heads)")
    p.add_argument("--head-dim", type=int, help="width of a head (default hidden / n_head)")
    p.add_argument("--intermediate", type=int, help="intermediate_size, the MLP width")
    p.add_argument("--seq", type=int, help="T, tokens per sequence")
    p.add_argument("--batch", type=int, help="B, sequences per step")
    p.add_argument("--rope-theta", type=float, help="rotary base (default 10000, or the preset's)")
    p.add_argument("--rms-eps", type=float, help="RMSNorm epsilon (default 1e-5)")
    p.add_argument("--tie", action=argparse.BooleanOptionalAction,
                   help="LM head tied to embed_tokens (default untied, or the preset's)")
    p.add_argument("--lora-r", type=int,
                   help="train PEFT LoRA adapters of this rank on a frozen base (peft's "
                        "inject_adapter_in_model; modes eager-f32 and bf16-autocast)")
    p.add_argument("--lora-alpha", type=float, help="LoRA alpha (default 2 * rank)")
    p.add_argument("--lora-targets", default="all-linear",
                   help="comma list of projection names (q_proj, ...) or all-linear")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--modes", help="comma list (default: every mode of the device): "
                   f"cpu {','.join(CPU_MODES)}; cuda {','.join(CUDA_MODES)}")
    p.add_argument("--out", help="write all results as JSON here")
    p.add_argument("--check", action="store_true",
                   help="compare the model with transformers' LlamaForCausalLM on small random "
                   "configs (logits, loss, gradients) and exit; needs transformers")
    p.add_argument("--single", metavar="MODE", help=argparse.SUPPRESS)  # the child process
    args = p.parse_args()
    args.mode_list = []
    if args.check:
        return args

    preset = PRESETS.get(args.preset, {})
    for key in SHAPE_KEYS + ARCH_KEYS:
        if getattr(args, key) is None:
            setattr(args, key, preset.get(key, DEFAULTS.get(key)))
    if args.head_dim is None and args.hidden is not None and args.n_head:
        if args.hidden % args.n_head:
            p.error(f"--hidden {args.hidden} is not a multiple of --n-head {args.n_head} "
                    "(give --head-dim)")
        args.head_dim = args.hidden // args.n_head
    missing = [k for k in SHAPE_KEYS if getattr(args, k) is None]
    if missing:
        p.error(f"missing {', '.join('--' + k.replace('_', '-') for k in missing)} (or give --preset)")
    if args.n_head % args.n_kv_head:
        p.error(f"--n-head {args.n_head} is not a multiple of --n-kv-head {args.n_kv_head}")
    if args.head_dim % 2:
        p.error(f"--head-dim {args.head_dim} is odd (rotary embeddings rotate pairs)")
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


def sdpa_has_enable_gqa():
    """Whether this torch's scaled_dot_product_attention takes enable_gqa (2.5 and later)."""
    q, kv = torch.zeros(1, 2, 1, 2), torch.zeros(1, 1, 1, 2)
    try:
        F.scaled_dot_product_attention(q, kv, kv, is_causal=True, enable_gqa=True)
    except TypeError:
        return False
    return True


ENABLE_GQA = sdpa_has_enable_gqa()


# ----------------------------------------------------------------------------------------------
# Llama (modeling_llama.py's LlamaForCausalLM, Hugging Face parameter names)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        # LlamaRMSNorm: normalized in float32, cast back to the input's dtype, then scaled
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


def rotary_tables(head_dim, theta, positions):
    """cos, sin (1, 1, T, head_dim) as LlamaRotaryEmbedding computes them (default rope_type)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
    freqs = torch.arange(positions)[:, None].float() * inv_freq  # (T, head_dim / 2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, head_dim)
    return emb.cos()[None, None], emb.sin()[None, None]


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def repeat_kv(x, n_rep):
    """(B, n_kv, T, hd) -> (B, n_kv * n_rep, T, hd), each KV head repeated for its query heads."""
    if n_rep == 1:
        return x
    B, n_kv, T, hd = x.shape
    return x[:, :, None].expand(B, n_kv, n_rep, T, hd).reshape(B, n_kv * n_rep, T, hd)


class Attention(nn.Module):
    def __init__(self, a, enable_gqa):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = a.n_head, a.n_kv_head, a.head_dim
        self.enable_gqa = enable_gqa
        self.q_proj = nn.Linear(a.hidden, a.n_head * a.head_dim, bias=False)
        self.k_proj = nn.Linear(a.hidden, a.n_kv_head * a.head_dim, bias=False)
        self.v_proj = nn.Linear(a.hidden, a.n_kv_head * a.head_dim, bias=False)
        self.o_proj = nn.Linear(a.n_head * a.head_dim, a.hidden, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        q = q * cos + rotate_half(q) * sin  # apply_rotary_pos_emb
        k = k * cos + rotate_half(k) * sin
        # scale 1/sqrt(head_dim), as LlamaAttention
        if self.enable_gqa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            rep = self.n_head // self.n_kv_head
            y = F.scaled_dot_product_attention(q, repeat_kv(k, rep), repeat_kv(v, rep), is_causal=True)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)  # (B, T, nh * hd)
        return self.o_proj(y)


class MLP(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.gate_proj = nn.Linear(a.hidden, a.intermediate, bias=False)
        self.up_proj = nn.Linear(a.hidden, a.intermediate, bias=False)
        self.down_proj = nn.Linear(a.intermediate, a.hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # SwiGLU


class DecoderLayer(nn.Module):
    def __init__(self, a, enable_gqa):
        super().__init__()
        self.input_layernorm = RMSNorm(a.hidden, a.rms_eps)
        self.self_attn = Attention(a, enable_gqa)
        self.post_attention_layernorm = RMSNorm(a.hidden, a.rms_eps)
        self.mlp = MLP(a)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):  # LlamaModel, named `model` in the state dict
    def __init__(self, a, enable_gqa):
        super().__init__()
        self.embed_tokens = nn.Embedding(a.vocab, a.hidden)
        self.layers = nn.ModuleList(DecoderLayer(a, enable_gqa) for _ in range(a.n_layer))
        self.norm = RMSNorm(a.hidden, a.rms_eps)


class LmHead(nn.Module):
    """The untied head, `lm_head.weight` (V, C): a parameter used by F.linear, not an nn.Linear,
    so float8 leaves it alone (the tied head is embed_tokens.weight, likewise)."""

    def __init__(self, a):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(a.vocab, a.hidden))


class Llama(nn.Module):
    def __init__(self, a, enable_gqa=ENABLE_GQA):
        super().__init__()
        self.model = Backbone(a, enable_gqa)
        self.lm_head = None if a.tie else LmHead(a)
        cos, sin = rotary_tables(a.head_dim, a.rope_theta, a.seq)  # once, for T = --seq
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        # LlamaPreTrainedModel._init_weights: N(0, 0.02) matrices and embeddings, RMSNorm 1;
        # no residual scaling (the Rust model's init too)
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, 0.0, INIT_STD)

    def forward(self, idx, targets=None):
        B, T = idx.shape
        cos, sin = self.rope_cos[:, :, :T], self.rope_sin[:, :, :T]
        x = self.model.embed_tokens(idx)  # (B, T, C)
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        x = self.model.norm(x)
        head = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        logits = F.linear(x, head)  # (B, T, V)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1))


# ----------------------------------------------------------------------------------------------
# One mode, in this process


def convert_float8(model, emulate):
    """torchao.float8 with the default (tensorwise, dynamic) recipe on the layer projections."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    from torchao.float8.float8_linear import Float8Linear

    config = Float8LinearConfig(emulate=emulate, round_scales_to_power_of_2=True)
    convert_to_float8_training(
        model, config=config, module_filter_fn=lambda mod, fqn: bool(FLOAT8_FQN.fullmatch(fqn))
    )
    converted = [n for n, m in model.named_modules() if isinstance(m, Float8Linear)]
    left = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    expected = [f"model.layers.{i}.{s}" for i in range(ARGS.n_layer) for s in PROJECTIONS]
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


def add_lora(model):
    """PEFT LoRA adapters on the layer projections, the rest frozen (PEFT's own injection into
    a plain torch module: the same LoraLayer forward as get_peft_model on LlamaForCausalLM)."""
    from peft import LoraConfig, inject_adapter_in_model

    a = ARGS
    names = [n.split(".")[-1] for n in PROJECTIONS]
    targets = names if a.lora_targets == "all-linear" else a.lora_targets.split(",")
    config = LoraConfig(r=a.lora_r, lora_alpha=a.lora_alpha or 2 * a.lora_r, lora_dropout=0.0,
                        target_modules=targets)
    inject_adapter_in_model(config, model)
    for name, p in model.named_parameters():
        p.requires_grad = "lora_" in name
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    import peft
    return dict(r=a.lora_r, lora_alpha=config.lora_alpha, target_modules=targets,
                trainable_params=trainable, peft=peft.__version__)


def make_optimizer(model):
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
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
    model = Llama(a).to(dev)
    result["params"] = sum(p.numel() for p in model.parameters())  # embed_tokens once if tied
    result["attention"] = ("sdpa enable_gqa" if ENABLE_GQA else "sdpa + repeat_kv") + ", causal"
    if mode in FLOAT8_MODES:
        try:
            import torchao.float8  # noqa: F401
        except ImportError as e:
            raise RuntimeError(f"torchao is unavailable ({e}); pip install torchao==0.18.0") from e
        result["float8"] = convert_float8(model, emulate=(mode == "torchao-float8-emulate"))
    if a.lora_r:
        if mode in FLOAT8_MODES:
            raise RuntimeError("--lora-r runs eager-f32 and bf16-autocast only")
        result["lora"] = add_lora(model)
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
        shapes={k: getattr(a, k) for k in SHAPE_KEYS + ARCH_KEYS},
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
# --check: the model against transformers' LlamaForCausalLM


# Small random configs: GQA untied; tied with a non-default theta and eps; multi-query attention
# with a head_dim that is not hidden / n_head; each also through the repeat_kv path.
CHECK_CONFIGS = (
    dict(vocab=97, n_layer=2, hidden=64, n_head=4, n_kv_head=2, head_dim=16, intermediate=96,
         seq=24, batch=3, rope_theta=10000.0, rms_eps=1e-5, tie=False),
    dict(vocab=131, n_layer=3, hidden=48, n_head=6, n_kv_head=3, head_dim=8, intermediate=80,
         seq=17, batch=2, rope_theta=100000.0, rms_eps=1e-6, tie=True),
    dict(vocab=64, n_layer=2, hidden=40, n_head=4, n_kv_head=1, head_dim=12, intermediate=72,
         seq=20, batch=2, rope_theta=10000.0, rms_eps=1e-5, tie=False),
)


def rel_diff(ours, ref):
    """max |ours - ref| / max |ref|, and max |ours - ref|."""
    ours, ref = ours.detach().double(), ref.detach().double()
    diff = (ours - ref).abs().max().item()
    scale = ref.abs().max().item()
    return (diff / scale if scale else diff), diff


def check_one(cfg, enable_gqa, dev):
    from transformers import LlamaConfig, LlamaForCausalLM

    a = argparse.Namespace(**cfg)
    torch.manual_seed(SEED)
    ours = Llama(a, enable_gqa=enable_gqa).to(dev)
    # Weights of unit-scale activations and RMSNorm weights away from 1, so that logits are O(1)
    # and every tensor's place matters (the training init, N(0, 0.02) and ones, hides both).
    with torch.no_grad():
        for p in ours.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, p.shape[-1] ** -0.5)
            else:
                p.normal_(1.0, 0.2)
    hf_config = LlamaConfig(
        vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
        num_hidden_layers=a.n_layer, num_attention_heads=a.n_head,
        num_key_value_heads=a.n_kv_head, head_dim=a.head_dim, max_position_embeddings=a.seq + 1,
        rms_norm_eps=a.rms_eps, rope_parameters=dict(rope_type="default", rope_theta=a.rope_theta),
        hidden_act="silu", attention_bias=False, mlp_bias=False, attention_dropout=0.0,
        tie_word_embeddings=a.tie, pad_token_id=None, bos_token_id=None, eos_token_id=None,
    )
    hf_config._attn_implementation = "eager"
    hf = LlamaForCausalLM(hf_config).to(dev, torch.float32)
    hf.config._attn_implementation = "eager"
    ours_params = dict(ours.named_parameters())
    hf_params = dict(hf.named_parameters())  # tied: lm_head.weight is embed_tokens.weight
    assert sorted(ours_params) == sorted(hf_params), f"{sorted(ours_params)} != {sorted(hf_params)}"
    with torch.no_grad():
        for name, p in hf_params.items():
            p.copy_(ours_params[name])
    if a.tie:
        assert hf.lm_head.weight is hf.model.embed_tokens.weight, "transformers did not tie"
    ours.train(), hf.train()  # dropout 0 in both

    gen = torch.Generator().manual_seed(SEED)
    buf = torch.randint(0, a.vocab, (a.batch, a.seq + 1), generator=gen).to(dev)
    x, y = buf[:, :-1], buf[:, 1:]
    # transformers shifts the labels itself: on the T+1 window, positions 0..T-1 predict 1..T,
    # the same loss as ours on (x, y); position T is what the causal mask keeps out of the rest.
    out = hf(input_ids=buf, labels=buf)
    hf_logits = out.logits[:, :-1]
    hf_loss = out.loss
    logits = ours(x)
    loss = F.cross_entropy(logits.reshape(-1, a.vocab), y.reshape(-1))
    loss_direct = ours(x, y)  # the training forward's own loss
    hf_loss.backward()
    loss_direct.backward()
    grad = max((rel_diff(ours_params[n].grad, p.grad) for n, p in hf_params.items()),
               key=lambda t: t[0])

    row = dict(config=cfg, attention="sdpa enable_gqa" if enable_gqa else "sdpa + repeat_kv")
    row["logits_rel"], row["logits_abs"] = rel_diff(logits, hf_logits)
    row["loss_rel"], row["loss_abs"] = rel_diff(loss_direct, hf_loss)
    row["loss"], row["loss_transformers"] = loss_direct.item(), hf_loss.item()
    row["grad_rel_max"], row["grad_abs_max"] = grad
    assert abs(loss.item() - loss_direct.item()) <= 1e-6 * abs(loss.item())
    row["ok"] = (row["logits_rel"] <= CHECK_RTOL and row["loss_rel"] <= CHECK_RTOL
                 and row["grad_rel_max"] <= CHECK_GRAD_RTOL)
    return row


def run_check():
    import transformers

    torch.set_float32_matmul_precision("highest")
    dev = torch.device(ARGS.device)
    print(f"--check: this file's Llama against transformers {transformers.__version__} "
          f"LlamaForCausalLM (eager attention, float32) on {ARGS.device}, torch {torch.__version__}; "
          f"enable_gqa available: {ENABLE_GQA}", file=sys.stderr)
    rows = []
    for cfg in CHECK_CONFIGS:
        for enable_gqa in ([True, False] if ENABLE_GQA else [False]):
            rows.append(check_one(cfg, enable_gqa, dev))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'config':<52}{'attention':<18}{'logits rel':>11}{'loss rel':>11}{'grad rel':>11}  ok")
    for r in rows:
        c = r["config"]
        name = (f"L{c['n_layer']} C{c['hidden']} h{c['n_head']}/{c['n_kv_head']}x{c['head_dim']} "
                f"I{c['intermediate']} V{c['vocab']} {'tied' if c['tie'] else 'untied'} "
                f"B{c['batch']}xT{c['seq']}")
        print(f"{name:<52}{r['attention']:<18}{r['logits_rel']:>11.2e}{r['loss_rel']:>11.2e}"
              f"{r['grad_rel_max']:>11.2e}  {'yes' if r['ok'] else 'NO'}")
    if ARGS.out:
        with open(ARGS.out, "w") as f:
            json.dump(rows, f, indent=2)
            f.write("\n")
    if not all(r["ok"] for r in rows):
        print(f"--check FAILED: logits or loss differ by more than {CHECK_RTOL} relative, or a "
              f"gradient by more than {CHECK_GRAD_RTOL}", file=sys.stderr)
        raise SystemExit(1)
    print(f"--check passed: logits and loss within {CHECK_RTOL} relative (max |diff| / max |ref|), "
          f"every gradient within {CHECK_GRAD_RTOL}")


# ----------------------------------------------------------------------------------------------
# Every mode, each in a fresh child process


def child_argv(mode):
    argv = [sys.executable, os.path.abspath(__file__), "--single", mode, "--device", ARGS.device,
            "--steps", str(ARGS.steps), "--warmup", str(ARGS.warmup)]
    for key in SHAPE_KEYS + ("rope_theta", "rms_eps"):
        argv += ["--" + key.replace("_", "-"), repr(getattr(ARGS, key))]
    argv.append("--tie" if ARGS.tie else "--no-tie")
    if ARGS.threads is not None:
        argv += ["--threads", str(ARGS.threads)]
    if ARGS.lora_r:
        argv += ["--lora-r", str(ARGS.lora_r), "--lora-targets", ARGS.lora_targets]
        if ARGS.lora_alpha is not None:
            argv += ["--lora-alpha", repr(ARGS.lora_alpha)]
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
    if ARGS.check:
        run_check()
        return
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
    shapes = ", ".join(f"{k} {getattr(ARGS, k)}" for k in SHAPE_KEYS + ARCH_KEYS)
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
