#!/usr/bin/env python3
"""Generate the pass-through ops of the `Fp8<B>` backend decorator.

Reads the op traits of `burn-backend` (FloatTensorOps, IntTensorOps, BoolTensorOps, ModuleOps,
ActivationOps, QTensorOps, TransactionOps) from the cargo registry and writes one file per trait
under `fp8-backend/src/decorator/ops/`, each an `impl<B: Fp8Kernels> XxxOps<Self> for Fp8<B>`
that forwards EVERY method, required and defaulted, to `B` (so that B's own overrides are used),
except the methods listed in OVERRIDES: the linear hooks, which go to `crate::linear`, and
`float_matmul`, which `crate::profile` times when the benchmark asks for it.

`Fp8<B>` has exactly B's primitive types, so most bodies are plain calls. Types generic over the
backend that are not aliases of the primitives (`TensorPrimitive<B>`, ...) are converted field by
field by the hand-written helpers in `decorator/convert.rs` (see CONVERT). A new such type, or one
nested inside another type, stops the script with a message naming the method.

Usage (from anywhere; Python 3.11, stdlib only; needs `rustfmt` on PATH):

    python3 fp8-backend/tools/gen_decorator.py [BURN_BACKEND_SRC_DIR] [--check]

Without a directory, the newest `burn-backend-*` in ~/.cargo/registry/src/*/ is used (pass the
directory when several versions are there). `--check` writes nothing and exits 1 when the
committed files differ from what the script would write.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

CRATE_DIR = Path(__file__).resolve().parent.parent
OUT_DIR = CRATE_DIR / "src" / "decorator" / "ops"

# (source file under burn-backend/src/backend/ops, trait, output file)
TRAITS = [
    ("tensor.rs", "FloatTensorOps", "float_tensor.rs"),
    ("int_tensor.rs", "IntTensorOps", "int_tensor.rs"),
    ("bool_tensor.rs", "BoolTensorOps", "bool_tensor.rs"),
    ("modules/base.rs", "ModuleOps", "module.rs"),
    ("activation.rs", "ActivationOps", "activation.rs"),
    ("qtensor.rs", "QTensorOps", "qtensor.rs"),
    ("transaction.rs", "TransactionOps", "transaction.rs"),
]

# Methods that do not go straight to `B`: method -> function called with the same arguments.
# docs/design.md "The decorator": the three GEMMs of a linear layer are where FP8 happens.
# `linear_bias_backward` is deliberately absent: the bias gradient stays f32 (a plain sum).
OVERRIDES = {
    "linear": ("crate::linear::forward::<B>", ["x", "weight", "bias"]),
    "linear_x_backward": ("crate::linear::x_backward::<B>", ["weight", "output_grad"]),
    "linear_weight_backward": ("crate::linear::weight_backward::<B>", ["x", "output_grad"]),
    # Timed when `crate::profile` is on (the benchmark's GEMM share); otherwise `B`'s own.
    "float_matmul": ("crate::profile::matmul::<B>", ["lhs", "rhs"]),
    # Zeros from `Fp8Kernels::zeros` (a backend may have a cheaper way than its own).
    "float_zeros": ("crate::kernel::zeros::<B>", ["shape", "device", "dtype"]),
    "embedding_backward": (
        "crate::kernel::embedding_backward::<B>",
        ["weights", "output_grad", "indices"],
    ),
}

# The trait each overridden method belongs to.
OWNER = {
    "linear": "ModuleOps",
    "linear_x_backward": "ModuleOps",
    "linear_weight_backward": "ModuleOps",
    "float_matmul": "FloatTensorOps",
    "float_zeros": "FloatTensorOps",
    "embedding_backward": "ModuleOps",
}

# Identifiers that may appear in signatures -> public path to import them from.
IMPORTS = {
    # Aliases of the primitives: identical for Fp8<B> and B.
    "FloatTensor": "burn::tensor::ops::FloatTensor",
    "IntTensor": "burn::tensor::ops::IntTensor",
    "BoolTensor": "burn::tensor::ops::BoolTensor",
    "QuantizedTensor": "burn::tensor::ops::QuantizedTensor",
    # Imported by name (no glob), so it cannot clash with any other `Device`.
    "Device": "burn::tensor::ops::Device",
    # Plain data.
    "TensorData": "burn::tensor::TensorData",
    "Shape": "burn::tensor::Shape",
    "Slice": "burn::tensor::Slice",
    "Distribution": "burn::tensor::Distribution",
    "Scalar": "burn::tensor::Scalar",
    "FloatDType": "burn::tensor::FloatDType",
    "IntDType": "burn::tensor::IntDType",
    "BoolDType": "burn::tensor::BoolDType",
    "IndexingUpdateOp": "burn::tensor::IndexingUpdateOp",
    "ExecutionError": "burn::tensor::backend::ExecutionError",
    "QuantScheme": "burn::tensor::quantization::QuantScheme",
    "GridSampleOptions": "burn::tensor::ops::GridSampleOptions",
    "ConvOptions": "burn::tensor::ops::ConvOptions",
    "DeformConvOptions": "burn::tensor::ops::DeformConvOptions",
    "ConvTransposeOptions": "burn::tensor::ops::ConvTransposeOptions",
    "UnfoldOptions": "burn::tensor::ops::UnfoldOptions",
    "InterpolateOptions": "burn::tensor::ops::InterpolateOptions",
    "AttentionModuleOptions": "burn::tensor::ops::AttentionModuleOptions",
    "TransactionPrimitiveData": "burn::tensor::ops::TransactionPrimitiveData",
    "Future": "core::future::Future",
    "Range": "core::ops::Range",
    # Containers typed by backend: converted, see CONVERT.
    "TensorPrimitive": "burn::tensor::TensorPrimitive",
    "QuantizationParametersPrimitive": "burn::tensor::quantization::QuantizationParametersPrimitive",
    "TransactionPrimitive": "burn::tensor::ops::TransactionPrimitive",
    "DeformConv2dBackward": "burn::tensor::ops::DeformConv2dBackward",
    "MaxPool1dWithIndices": "burn::tensor::ops::MaxPool1dWithIndices",
    "MaxPool1dBackward": "burn::tensor::ops::MaxPool1dBackward",
    "MaxPool2dWithIndices": "burn::tensor::ops::MaxPool2dWithIndices",
    "MaxPool2dBackward": "burn::tensor::ops::MaxPool2dBackward",
}

# In the Rust prelude, or not a type (`Output` in `Future<Output = ..>`).
NO_IMPORT = {"Self", "Option", "Vec", "Result", "Send", "Sync", "Output"}

# Aliases `<B as BackendTypes>::X`: the same type for `Fp8<B>` as for `B`, no conversion.
ALIASES = {"FloatTensor", "IntTensor", "BoolTensor", "QuantizedTensor", "Device"}
# Generic wrappers a primitive alias may sit in without needing conversion.
TRANSPARENT = {"Option", "Vec", "Result", "Future"}

# Types generic over the backend that need conversion -> stem of the helpers in
# `decorator/convert.rs`: `<stem>_to_inner` (argument, Fp8<B> -> B) and `<stem>_from_inner`
# (result, B -> Fp8<B>).
CONVERT = {
    "TensorPrimitive": "tensor_primitive",
    "QuantizationParametersPrimitive": "qparams",
    "TransactionPrimitive": "transaction",
    "DeformConv2dBackward": "deform_conv2d_backward",
    "MaxPool1dWithIndices": "max_pool1d_with_indices",
    "MaxPool1dBackward": "max_pool1d_backward",
    "MaxPool2dWithIndices": "max_pool2d_with_indices",
    "MaxPool2dBackward": "max_pool2d_backward",
}


class GenError(Exception):
    pass


@dataclass
class Method:
    name: str
    generics: str  # including the angle brackets, or ""
    params: list[tuple[str, str]]  # (name, type), types already rewritten for `Self`
    ret: str | None
    where: str | None
    has_default: bool


def find_burn_backend() -> Path:
    home = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo"))
    found = sorted(glob.glob(str(home / "registry" / "src" / "*" / "burn-backend-*")))
    if not found:
        raise GenError(
            f"no burn-backend sources under {home}/registry/src; run `cargo fetch` first "
            "or pass the directory"
        )

    def version(p: str) -> tuple[int, ...]:
        v = p.rsplit("burn-backend-", 1)[1]
        return tuple(int(x) if x.isdigit() else 0 for x in re.split(r"[.-]", v))

    return Path(max(found, key=version))


def strip_comments_and_literals(src: str) -> str:
    """Drops comments and blanks string/char literals, so braces can be counted."""
    out = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
        elif src.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if src.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif src.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif m := re.compile(r'r(#*)"').match(src, i):
            end = src.find('"' + m.group(1), m.end())
            out.append('""')
            i = end + 1 + len(m.group(1))
        elif c == '"':
            i += 1
            while i < n and src[i] != '"':
                i += 2 if src[i] == "\\" else 1
            out.append('""')
            i += 1
        elif m := re.compile(r"'(\\.[^']*|[^\\'])'").match(src, i):
            out.append("' '")
            i = m.end()
        else:
            out.append(c)
            i += 1
    return "".join(out)


def matching(text: str, open_pos: int, open_c: str = "{", close_c: str = "}") -> int:
    depth = 0
    for k in range(open_pos, len(text)):
        if text[k] == open_c:
            depth += 1
        elif text[k] == close_c:
            depth -= 1
            if depth == 0:
                return k
    raise GenError(f"unbalanced {open_c}{close_c}")


def split_top(text: str, sep: str = ",") -> list[str]:
    """Splits at `sep` outside (), [], <> (ignoring the `>` of `->`)."""
    parts, depth, cur, i = [], 0, [], 0
    while i < len(text):
        c = text[i]
        if text.startswith("->", i):
            cur.append("->")
            i += 2
            continue
        if c in "([<":
            depth += 1
        elif c in ")]>":
            depth -= 1
        if c == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def rewrite_type(ty: str) -> str:
    ty = " ".join(ty.split())
    ty = re.sub(r"\bcrate::(?:\w+::)*(\w+)", r"\1", ty)  # private paths -> imported name
    ty = re.sub(r"\bB\b", "Self", ty)
    return ty


def parse_trait(src: str, trait: str) -> list[Method]:
    text = strip_comments_and_literals(src)
    m = re.search(rf"\bpub trait {trait}\s*<\s*B\s*:\s*Backend\s*>[^{{]*\{{", text)
    if not m:
        raise GenError(f"trait {trait} not found")
    body_start, body_end = m.end(), matching(text, m.end() - 1)
    methods, i = [], body_start
    fn_re = re.compile(r"\bfn\s+(\w+)")
    while True:
        fm = fn_re.search(text, i, body_end)
        if not fm:
            break
        name = fm.group(1)
        qualifiers = text[text.rfind("\n", 0, fm.start()) : fm.start()]
        if re.search(r"\b(async|unsafe|const|extern)\b", qualifiers):
            raise GenError(f"{trait}::{name}: async/unsafe/const fn not supported")
        k = fm.end()
        generics = ""
        if text[k] == "<":
            g_end = matching(text, k, "<", ">")
            generics, k = rewrite_type(text[k : g_end + 1]), g_end + 1
        p_open = text.index("(", k)
        p_close = matching(text, p_open, "(", ")")
        # The signature ends at the first `;` or `{` after the parameters.
        end = min(
            x for x in (text.find(";", p_close), text.find("{", p_close)) if x >= 0
        )
        tail = text[p_close + 1 : end].strip()
        ret, where = None, None
        if re.search(r"\bwhere\b", tail):
            tail, where = re.split(r"\bwhere\b", tail, maxsplit=1)
            tail, where = tail.strip(), rewrite_type(where)
        if tail.startswith("->"):
            ret = rewrite_type(tail[2:])
        elif tail:
            raise GenError(f"{trait}::{name}: unexpected `{tail}` after parameters")
        params = []
        for p in split_top(text[p_open + 1 : p_close]):
            if p in ("self", "&self", "&mut self", "mut self"):
                raise GenError(f"{trait}::{name}: methods with self are not supported")
            pname, pty = p.split(":", 1)
            pname = pname.strip()
            if pname.startswith("mut "):
                pname = pname[4:].strip()
            params.append((pname.lstrip("_"), rewrite_type(pty)))
        names = [p for p, _ in params]
        if len(set(names)) != len(names):
            raise GenError(f"{trait}::{name}: parameter names clash without their `_`: {names}")
        has_default = text[end] == "{"
        methods.append(Method(name, generics, params, ret, where, has_default))
        i = matching(text, end) + 1 if has_default else end + 1
    return methods


IDENT = re.compile(r"\b([A-Z]\w*)\b(?!\s*=[^=])")


def idents(ty: str) -> set[str]:
    return set(IDENT.findall(ty))


def backend_generic(ty: str) -> list[str]:
    """Type constructors applied to `Self` directly: `Foo<Self>` or `Foo<Self, ...>`."""
    return re.findall(r"\b(\w+)\s*<\s*Self\b", ty)


def conversion(trait: str, method: str, ty: str, what: str) -> str | None:
    """Returns the CONVERT stem when `ty` is exactly `Foo<Self>` for a Foo needing conversion."""
    bad = [c for c in backend_generic(ty) if c not in ALIASES]
    if not bad:
        return None
    top = re.fullmatch(r"(\w+)\s*<\s*Self\s*>", ty)
    if top and top.group(1) in CONVERT and bad == [top.group(1)]:
        return CONVERT[top.group(1)]
    if any(c not in CONVERT and c not in TRANSPARENT for c in bad):
        raise GenError(
            f"{trait}::{method}: {what} `{ty}` is typed by backend; add its type to CONVERT "
            "and a helper to decorator/convert.rs"
        )
    raise GenError(
        f"{trait}::{method}: {what} `{ty}` nests a backend-typed container; "
        "write a conversion by hand (extend the script)"
    )


def render_impl(trait: str, methods: list[Method], version: str) -> str:
    used: set[str] = {trait}
    fns = []
    seen_overrides = set()
    for m in methods:
        args = []
        for pname, pty in m.params:
            used |= idents(pty)
            stem = conversion(trait, m.name, pty, f"parameter `{pname}`")
            args.append(f"convert::{stem}_to_inner({pname})" if stem else pname)
        if m.name in OVERRIDES:
            callee, expected = OVERRIDES[m.name]
            names = [p for p, _ in m.params]
            if names != expected:
                raise GenError(f"{trait}::{m.name}: parameters {names}, expected {expected}")
            seen_overrides.add(m.name)
        else:
            callee = f"B::{m.name}"
        call = f"{callee}({', '.join(args)})"
        if m.ret:
            used |= idents(m.ret)
            stem = conversion(trait, m.name, m.ret, "result")
            if stem:
                call = f"convert::{stem}_from_inner({call})"
        params = ", ".join(f"{p}: {t}" for p, t in m.params)
        sig = f"fn {m.name}{m.generics}({params})"
        if m.ret:
            sig += f" -> {m.ret}"
        if m.where:
            sig += f" where {m.where}"
        fns.append(f"    {sig} {{\n        {call}\n    }}\n")
    expected_here = {o for o, (callee, _) in OVERRIDES.items() if OWNER[o] == trait}
    if expected_here - seen_overrides:
        raise GenError(f"{trait} lacks the overridden methods {sorted(expected_here - seen_overrides)}")

    used -= NO_IMPORT
    unknown = sorted(u for u in used if u not in IMPORTS and u != trait)
    if unknown:
        raise GenError(f"{trait}: add the public paths of {unknown} to IMPORTS")
    imports = sorted(IMPORTS[u] for u in used if u != trait)
    imports.append(f"burn::tensor::ops::{trait}")
    n_req = sum(not m.has_default for m in methods)
    header = (
        f"// @generated by fp8-backend/tools/gen_decorator.py from burn-backend {version} "
        "— do not edit; rerun the script.\n"
        f"//! `{trait}` for `Fp8<B>`: forwards all {len(methods)} methods ({n_req} required, "
        f"{len(methods) - n_req} defaulted) to `B`.\n"
    )
    here = [o for o in OVERRIDES if OWNER[o] == trait]
    if here:
        targets = sorted({OVERRIDES[o][0].rsplit("::", 2)[0] for o in here})
        names = ", ".join(f"`{o}`" for o in here)
        header += f"//! Except {names}: they go to {', '.join(f'`{t}`' for t in targets)}.\n"
    header += "\n"
    groups: dict[str, list[str]] = {}
    for path in set(imports):
        module, name = path.rsplit("::", 1)
        groups.setdefault(module, []).append(name)
    uses = ""
    for module in sorted(groups):
        names = sorted(groups[module])
        uses += f"use {module}::{names[0]};\n" if len(names) == 1 else (
            f"use {module}::{{{', '.join(names)}}};\n"
        )
    uses += "\n"
    if any("convert::" in f for f in fns):
        uses += "use crate::decorator::convert;\n"
    uses += "use crate::decorator::Fp8;\nuse crate::kernel::Fp8Kernels;\n"
    return (
        header
        + uses
        + f"\nimpl<B: Fp8Kernels> {trait}<Self> for Fp8<B> {{\n"
        + "\n".join(fns)
        + "}\n"
    )


def render_mod(version: str) -> str:
    header = (
        f"// @generated by fp8-backend/tools/gen_decorator.py from burn-backend {version} "
        "— do not edit; rerun the script.\n"
        "//! One file per Burn ops trait, as in `burn-autodiff` and `burn-fusion`.\n\n"
    )
    return header + "".join(f"mod {Path(out).stem};\n" for _, _, out in TRAITS)


def rustfmt(files: dict[str, str]) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name, text in files.items():
            p = Path(tmp) / name
            p.write_text(text, encoding="utf-8")
            paths.append(str(p))
        subprocess.run(["rustfmt", "--edition", "2021", *paths], check=True)
        return {name: (Path(tmp) / name).read_text(encoding="utf-8") for name in files}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("burn_backend", nargs="?", help="burn-backend-X.Y.Z source directory")
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    a = ap.parse_args()
    try:
        root = Path(a.burn_backend) if a.burn_backend else find_burn_backend()
        version = root.name.rsplit("burn-backend-", 1)[-1]
        files = {}
        total = required = 0
        for src, trait, out in TRAITS:
            methods = parse_trait((root / "src/backend/ops" / src).read_text("utf-8"), trait)
            total += len(methods)
            required += sum(not m.has_default for m in methods)
            files[out] = render_impl(trait, methods, version)
        files["mod.rs"] = render_mod(version)
        files = rustfmt(files)
    except (GenError, OSError, subprocess.CalledProcessError) as e:
        print(f"gen_decorator: {e}", file=sys.stderr)
        return 2
    if a.check:
        stale = [
            n
            for n, t in files.items()
            if not (OUT_DIR / n).exists() or (OUT_DIR / n).read_text("utf-8") != t
        ]
        if stale:
            print(
                f"gen_decorator: stale against burn-backend {version}: {', '.join(stale)}; "
                "rerun fp8-backend/tools/gen_decorator.py",
                file=sys.stderr,
            )
            return 1
        print(f"gen_decorator: up to date ({total} methods, burn-backend {version})")
        return 0
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (OUT_DIR / name).write_text(text, encoding="utf-8")
    print(
        f"gen_decorator: wrote {len(files)} files to {OUT_DIR} from {root}: "
        f"{total} methods ({required} required, {total - required} default)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
