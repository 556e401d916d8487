"""Measurements behind ``benchmarks/gpu_bench.py``: self-check, one attention layer, OMP throughput.

Each section reports through the script's ``run`` object (``run.row``, ``run.note``, ``run.fits``);
the model sections (decode, prefill) live in ``gpu_model``. The self-check's problems come from
``tests/kernel_cases.py`` (imported as ``tests.kernel_cases``: ``gpu_bench.py`` puts the repository root
and this folder on ``sys.path``). Times are medians of device-event-timed
repeats after a warm-up (host clock on CPU).
"""

from __future__ import annotations

import dataclasses

import torch
from gpu_measure import nan_if_none, time_ms, verdict
from gpu_model import model_rows

from lexico_chat.accel import pytorch_path
from lexico_chat.attention import CompressedKV, compressed_attention
from lexico_chat.omp import omp
from lexico_chat.rope import pair_order
from tests.kernel_cases import TOLERANCE, check_decode, check_omp, decode_case, unit_dictionary

__all__ = ["describe", "self_check", "attention_op", "omp_rate", "model_rows"]

OMP_SHAPES = ((128, 4096, 8), (128, 4096, 16))
SMOKE_OMP_SHAPES = ((16, 64, 4),)
LAYERS = 28  # attention data is cycled over this many layers, as in the model (keeps it out of L2)


def describe(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu (smoke: Triton through TRITON_INTERPRET=1 where installed)"
    props = torch.cuda.get_device_properties(device)
    size = f"{props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB"
    return f"{props.name}, {size}, torch {torch.__version__}, CUDA {torch.version.cuda}"


def _poison(device: torch.device, nbytes: int = 1 << 26) -> None:
    """Leave NaN in freed allocator blocks, so an output element a kernel fails to write shows up."""
    if device.type == "cuda":
        torch.full((nbytes // 4,), float("nan"), device=device)


def self_check(run, device: torch.device, smoke: bool, has_cache: bool) -> bool:
    """Triton vs PyTorch on fresh random inputs (decode attention and OMP); False (and run.failed) on a miss."""
    ok = True
    if has_cache:
        big = dict(head_dim=16, atoms=64) if smoke else dict(head_dim=128, atoms=4096)
        cases = [
            dict(kv_heads=8 if not smoke else 2, groups=3, sparsity=8, compressed=3000 if not smoke else 150,
                 buffer=128 if not smoke else 9, dtype=torch.bfloat16, **big),
            dict(batch=2, kv_heads=2, groups=4, head_dim=64 if not smoke else 16, atoms=1024 if not smoke else 64,
                 sparsity=16, compressed=777 if not smoke else 77, buffer=5, dtype=torch.float16,
                 coef_dtype=torch.float16, softcap=30.0, mask=True),
            dict(kv_heads=1, groups=1, sparsity=4, compressed=1, buffer=0, coef_dtype=torch.float32, **big),
            dict(batch=3, kv_heads=4, groups=2, head_dim=96 if not smoke else 24, atoms=256 if not smoke else 64,
                 sparsity=5, compressed=5000 if not smoke else 100, buffer=17, dtype=torch.bfloat16),
            dict(kv_heads=8 if not smoke else 2, groups=3, sparsity=8, compressed=3000 if not smoke else 150,
                 buffer=128 if not smoke else 9, dtype=torch.bfloat16, key_space="pre_rope_pairs", **big),
            dict(batch=2, kv_heads=2, groups=4, head_dim=64 if not smoke else 16, atoms=1024 if not smoke else 64,
                 sparsity=4, compressed=777 if not smoke else 77, buffer=5, dtype=torch.float16, mask=True,
                 key_space="pre_rope"),
        ]  # fmt: skip
        for i, kw in enumerate(cases):
            _poison(device)
            case = decode_case(device=device, seed=100 + i, **kw)
            err = run.attempt(f"decode check {i}", check_decode, case)
            passed = err is not None and err < TOLERANCE[kw.get("dtype", torch.float32)]
            ok &= passed
            run.row(
                "check", f"decode case {i}", verdict(passed), nan_if_none(err), "rel.err", passed=passed, case=str(kw)
            )
    for m, n, s in SMOKE_OMP_SHAPES if smoke else ((128, 4096, 8), (128, 4096, 16)):
        gen = torch.Generator().manual_seed(s)
        x = torch.randn(64 if smoke else 2048, m, generator=gen).to(device)
        d = unit_dictionary(m, n, gen, device)
        for select in (torch.float32, torch.bfloat16):
            _poison(device)
            rep = run.attempt(f"omp check ({m},{n},{s})", check_omp, x, d, s, select_dtype=select)
            name = str(select).replace("torch.", "")
            if rep is None:
                ok = False
                run.row("check", f"omp ({m},{n},{s}) {name}", verdict(False), float("nan"), "err/torch", passed=False)
                continue
            if select == torch.float32:
                passed = rep["agreement"] >= 0.9 and abs(rep["error"] - rep["error_torch"]) < 2e-3
            else:  # torch rounds bf16 correlations before the argmax; the kernel keeps fp32 ones
                passed = rep["error"] <= rep["error_torch"] * 1.02 + 1e-3
            passed &= rep["distinct"] == 1.0
            ok &= passed
            ratio = rep["error"] / rep["error_torch"]
            run.row("check", f"omp ({m},{n},{s}) {name}", verdict(passed), ratio, "err/torch", passed=passed, **rep)
    if not ok:
        run.failed = True
        run.note("Triton self-check FAILED: Triton timings skipped")
    return ok


def attention_op(run, device: torch.device, contexts: list[int], triton_ok: bool, smoke: bool) -> None:
    """One decode attention layer (24 query heads, 8 KV heads, head_dim 128, s=8, N=4096, buffer 128)."""

    shape = (2, 2, 3, 16, 64, 4, 8) if smoke else (LAYERS, 8, 3, 128, 4096, 8, 128)
    for ctx in contexts:
        if not run.fits(5 + ctx / 16384, f"attention op at {ctx}") or not _memory_fits(device, shape[0] * ctx * 5e3):
            break
        for name, ms in _attention_at(run, device, ctx, shape, triton_ok, reps=3 if smoke else 10):
            run.row("attn-op", f"{ctx} tokens", name, nan_if_none(ms) * 1e3, "us/layer")


def _attention_at(run, device, ctx: int, shape: tuple, triton_ok: bool, reps: int) -> list[tuple[str, float | None]]:
    """(variant, ms per layer) of SDPA on dense bf16 K/V and of the compressed cache (PyTorch, Triton)."""
    layers, hkv, groups, m, n_atoms, s, buf = shape
    tc, dt, scale = ctx - buf, torch.bfloat16, m**-0.5
    q = torch.randn(1, hkv * groups, 1, m, device=device, dtype=dt)
    keys, values = (torch.randn(layers, 1, hkv, ctx, m, device=device, dtype=dt) for _ in "kv")
    dk = torch.nn.functional.normalize(torch.randn(m, n_atoms, device=device), dim=0)
    dv = torch.nn.functional.normalize(torch.randn(n_atoms, m, device=device), dim=1).t()

    def codes():
        idx = torch.randint(0, n_atoms, (1, hkv, tc, s), device=device, dtype=torch.int16)
        return idx, (0.3 * torch.randn(1, hkv, tc, s, device=device)).to(torch.float8_e4m3fn)

    comp = [CompressedKV(*codes(), *codes(), dk, dv) for _ in range(layers)]
    turns = torch.rand(1, tc, m // 2, device=device) * 6.3  # pre-RoPE codes: the rotary table and pair-ordered atoms
    rope = (turns.cos().half(), turns.sin().half())
    dk_pairs = dk[pair_order(m, dk.device)].t().contiguous().t()
    comp_rope = [dataclasses.replace(c, key_dictionary=dk_pairs, key_rope=rope, key_pairs=True) for c in comp]

    def sdpa():
        for i in range(layers):
            torch.nn.functional.scaled_dot_product_attention(q, keys[i], values[i], enable_gqa=True)

    def pytorch():
        with pytorch_path():
            for i in range(layers):
                compressed_attention(q, keys[i, :, :, :buf], values[i, :, :, :buf], comp[i], None, scaling=scale)

    def fused(stores=comp):
        from lexico_chat.attention.triton_decode import decode_attention  # triton: only where it is installed

        for i in range(layers):
            decode_attention(q, keys[i, :, :, :buf], values[i, :, :, :buf], stores[i], None, scaling=scale)

    def pytorch_rope():
        with pytorch_path():
            for i in range(layers):
                compressed_attention(q, keys[i, :, :, :buf], values[i, :, :, :buf], comp_rope[i], None, scaling=scale)

    variants = [("sdpa dense bf16", sdpa), ("lexico pytorch", pytorch), ("lexico pytorch pre-rope", pytorch_rope)]
    variants += [("lexico triton", fused), ("lexico triton pre-rope", lambda: fused(comp_rope))] * triton_ok
    times = [(name, run.attempt(f"attention {name} at {ctx}", time_ms, fn, device, reps=reps)) for name, fn in variants]
    if triton_ok and device.type == "cuda":
        times += run.attempt(f"kernel breakdown at {ctx}", _kernel_times, fused) or []
    return [(name, None if ms is None else ms / layers) for name, ms in times]


def _kernel_times(fn) -> list[tuple[str, float]]:
    """(kernel name, ms) of the Triton decode kernels over one call of ``fn``, from the CUDA profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    out = []
    for event in prof.key_averages():
        if event.key.startswith(("_table_kernel", "_scores_kernel", "_values_kernel", "_output_kernel")):
            total = getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0.0)
            out.append((f"  kernel {event.key}", total / 1e3))
    return out


def _memory_fits(device: torch.device, nbytes: float) -> bool:
    return device.type != "cuda" or nbytes < 0.8 * torch.cuda.mem_get_info(device)[0]


def omp_rate(run, device: torch.device, triton_ok: bool, smoke: bool) -> None:
    """Vectors/s of the PyTorch OMP and the fused Triton OMP, fp32 (exact) and bf16 atom selection."""
    for m, n, s in SMOKE_OMP_SHAPES if smoke else OMP_SHAPES:
        if not run.fits(15, f"OMP at ({m},{n},{s})"):
            return
        gen = torch.Generator().manual_seed(0)
        d = torch.nn.functional.normalize(torch.randn(m, n, generator=gen), dim=0).to(device)
        x = torch.randn(256 if smoke else 65536, m, generator=gen).to(device)
        for select in (torch.float32, torch.bfloat16):
            name = str(select).replace("torch.", "")
            few = x[: 256 if smoke else 16384]
            with pytorch_path():
                ms = time_ms(lambda: omp(few, d, s, select_dtype=select), device, reps=3)  # noqa: B023
            run.row("omp", f"({m},{n},{s}) {name}", "pytorch", few.shape[0] / ms * 1e3, "vectors/s")
            if triton_ok:
                from lexico_chat.gpu.pursuit import omp as fused_omp  # triton: only where it is installed

                call = lambda: fused_omp(x, d, s, select_dtype=select)  # noqa: B023, E731
                ms = run.attempt(f"triton omp ({m},{n},{s}) {name}", time_ms, call, device, reps=3)
                run.row("omp", f"({m},{n},{s}) {name}", "triton", x.shape[0] / nan_if_none(ms) * 1e3, "vectors/s")
