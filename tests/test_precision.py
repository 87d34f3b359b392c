"""Mixed precision (bf16 / fp16 autocast) and torch.compile of the network, on CPU with tiny data."""
from __future__ import annotations

import math

import pytest
import torch

import mgid.precision
from mgid.checkpoint import read_meta
from mgid.config.fields import ConfigError, merge
from mgid.config.train_config import resolve_config
from mgid.models import MGIDNet, ModelConfig
from mgid.train.trainer import Trainer

TINY = {
    "embedded": {"size": 32, "frames_per_scene": 2, "train_scenes_per_photo": 1, "val_scenes_per_photo": 1,
                 "paired_count": 2},
    "model": {"channels": 8, "memory_items": 4},
    "crop_size": 16, "batch_size": 4, "device": "cpu", "log_every": 1, "image_every": 0, "val_every": 0,
    "checkpoint_every": 0, "sample_rows": 1, "val_count": 1,
}


def run(tmp_path, steps: int = 3, **extra):
    cfg = resolve_config(None, merge(TINY, {"out": str(tmp_path / "run"), "max_steps": steps, **extra}))
    trainer = Trainer(cfg, log=lambda s: None)
    return trainer, trainer.run()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_and_keeps_items_fp32(tmp_path, precision):
    trainer, result = run(tmp_path, precision=precision)
    assert result.step == 3 and all(math.isfinite(h["total"]) for h in result.history)
    items = trainer.net.memory.items
    assert items.dtype == torch.float32
    torch.testing.assert_close(items.norm(dim=1), torch.ones(items.shape[0]), rtol=0, atol=1e-5)
    assert all(p.dtype == torch.float32 for p in trainer.net.parameters())
    assert (trainer.scaler is not None) == (precision == "fp16")
    if precision == "fp16":
        from mgid import checkpoint as ck

        assert ck.load_checkpoint(tmp_path / "run" / "checkpoints").meta["grad_scaler"]["scale"] > 0


def test_bf16_is_close_to_fp32_on_the_first_step(tmp_path):
    _, a = run(tmp_path / "a", steps=1)
    _, b = run(tmp_path / "b", steps=1, precision="bf16")
    assert abs(a.history[0]["total"] - b.history[0]["total"]) < 0.05 * abs(a.history[0]["total"]) + 1e-3


def test_fast_path_loss_curve_matches_fp32(tmp_path):
    """bf16 autocast + channels_last (the CPU default) follows the fp32 eager loss curve within noise: same
    seed, same batches, 40 steps; the curves' mean gap over the second half is a small fraction of the loss."""
    steps = 40
    _, a = run(tmp_path / "fp32", steps=steps, precision="fp32", channels_last="off")
    _, b = run(tmp_path / "fast", steps=steps, precision="bf16", channels_last="on")
    fa = [h["total"] for h in a.history][steps // 2:]
    fb = [h["total"] for h in b.history][steps // 2:]
    gap = sum(abs(x - y) for x, y in zip(fa, fb)) / len(fa)
    mean = sum(abs(x) for x in fa) / len(fa)
    assert gap < 0.1 * mean, (gap, mean)
    # both learn: the second half is lower than the first steps
    assert sum(fb) / len(fb) < b.history[0]["total"] and sum(fa) / len(fa) < a.history[0]["total"]


def test_auto_precision_and_memory_format(tmp_path, monkeypatch):
    monkeypatch.setattr(mgid.precision, "cpu_has_native_bf16", lambda: True)
    trainer, _ = run(tmp_path / "auto", steps=1)
    assert (trainer.precision, trainer.channels_last) == ("bf16", True)
    conv = next(m for m in trainer.net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(mgid.precision, "cpu_has_native_bf16", lambda: False)
    trainer, _ = run(tmp_path / "plain", steps=1)
    assert (trainer.precision, trainer.channels_last) == ("fp32", False)
    trainer, _ = run(tmp_path / "forced", steps=1, precision="fp32", channels_last="on")
    assert (trainer.precision, trainer.channels_last) == ("fp32", True)


def test_the_log_says_what_auto_chose_and_why(tmp_path):
    """Training prints the resolved arithmetic with the CPU and the flags it saw (issue 17)."""
    lines = []
    cfg = resolve_config(None, merge(TINY, {"out": str(tmp_path / "run"), "max_steps": 1}))
    Trainer(cfg, log=lines.append).run()
    header = next(line for line in "\n".join(lines).splitlines() if line.startswith("arithmetic: "))
    info = mgid.precision.cpu_info()
    assert info.model in header and "auto precision and memory format" in header
    assert ("bf16 autocast + channels_last" in header) == info.native_bf16, header
    for flag in info.flags:
        assert flag in header
    # the checkpoint records what auto resolved to; its config keeps "auto"
    meta = read_meta(tmp_path / "run" / "checkpoints" / "last.json")
    assert meta["config"]["precision"] == "auto"
    assert meta["arithmetic"]["precision"] == ("bf16" if info.native_bf16 else "fp32")
    assert meta["arithmetic"]["channels_last"] == info.native_bf16 and info.model in meta["arithmetic"]["reason"]


def test_precision_is_checked():
    with pytest.raises(ConfigError, match="precision"):
        resolve_config(None, {"precision": "fp8"})


# --------------------------------------------------------------------------------------------------
# torch.compile


def test_train_forward_has_no_graph_breaks():
    """The custom ops have fake kernels and the in-place item update traces: one graph, zero breaks."""
    net = MGIDNet(ModelConfig(channels=8, memory_items=4), torch.Generator().manual_seed(0)).train()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(net)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_compiled_training_matches_eager(tmp_path, monkeypatch):
    """--compile: a compiled step (aot_eager here, to skip inductor's C++ build; --compile itself uses the
    default backend) gives the eager step's loss, items and weights."""
    calls = []
    real = torch.compile

    def compile_aot_eager(model, **kwargs):
        calls.append(kwargs)
        return real(model, **{**kwargs, "backend": "aot_eager"})

    monkeypatch.setattr(torch, "compile", compile_aot_eager)
    torch._dynamo.reset()
    compiled, c = run(tmp_path / "compiled", steps=2, compile=True)
    eager, e = run(tmp_path / "eager", steps=2)
    assert calls == [{}]  # the default backend unless patched
    for hc, he in zip(c.history, e.history):
        assert hc["total"] == pytest.approx(he["total"], rel=1e-4, abs=1e-5)
    torch.testing.assert_close(compiled.net.memory.items, eager.net.memory.items, rtol=0, atol=1e-5)
    for (k, a), b in zip(compiled.net.state_dict().items(), eager.net.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)
    assert all("_orig_mod" not in k for k in compiled.net.state_dict())  # checkpoints keep plain keys


@pytest.mark.slow
def test_inductor_compiled_steps_backward_twice():
    """The default backend (inductor, C++ on CPU: ~35 s to build here): two forward+backward rounds.

    Regression: writing the items buffer in place made the second backward fail ("modified by an
    inplace operation") because the compiled graph saved the buffer itself; the update now replaces it.
    """
    net = MGIDNet(ModelConfig(channels=8, memory_items=4), torch.Generator().manual_seed(0)).train()
    torch._dynamo.reset()
    compiled = torch.compile(net)
    before = net.memory.items.clone()
    for _ in range(2):
        a, b = compiled(torch.rand(2, 3, 16, 16) * 2 - 1), compiled(torch.rand(2, 3, 16, 16) * 2 - 1)
        (a.rain.mean() + b.rain.mean() + a.compactness + b.compactness).backward()
    assert not torch.equal(before, net.memory.items)


# --------------------------------------------------------------------------------------------------
# auto, resolved from the machine


def fake_cpu(monkeypatch, flags, capability="AVX512", dnnl=None):
    info = mgid.precision.CpuInfo("Test CPU 9000", tuple(flags), capability, dnnl)
    monkeypatch.setattr(mgid.precision, "cpu_info", lambda: info)
    return info


@pytest.mark.parametrize(("flags", "capability", "dnnl", "native"), [
    (("avx2", "avx512f", "avx512_bf16"), "AVX512", None, True),
    (("avx2", "avx512f", "avx512_bf16", "amx_bf16"), "AVX512", "AVX512_CORE_AMX", True),
    (("avx2", "avx512f"), "AVX512", None, False),  # AVX512 without bf16 dot products
    (("avx2",), "AVX2", None, False),
    (("avx2", "avx512f", "avx512_bf16"), "AVX2", None, False),  # ATEN_CPU_CAPABILITY=avx2
    (("avx2", "avx512f", "avx512_bf16"), "AVX512", "AVX2", False),  # DNNL_MAX_CPU_ISA=AVX2
    ((), "DEFAULT", None, False),
])
def test_auto_follows_the_cpu_and_its_caps(monkeypatch, flags, capability, dnnl, native):
    fake_cpu(monkeypatch, flags, capability, dnnl)
    assert mgid.precision.cpu_has_native_bf16() is native
    auto = mgid.precision.resolve_arithmetic("auto", None, "cpu")
    assert (auto.precision, auto.channels_last) == (("bf16", True) if native else ("fp32", False))
    assert "Test CPU 9000" in auto.reason and all(f in auto.reason for f in flags)
    if not native and "avx512_bf16" in flags:
        assert "capped" in auto.reason
    forced = mgid.precision.resolve_arithmetic("bf16", True, "cpu")
    assert (forced.precision, forced.channels_last) == ("bf16", True) and "set explicitly" in forced.reason
    assert ("10x slower" in forced.reason) is (not native)
    gpu = mgid.precision.resolve_arithmetic("auto", None, "cuda")
    assert (gpu.precision, gpu.channels_last) == ("fp32", False)


def test_cpu_info_of_this_machine():
    info = mgid.precision.cpu_info()
    assert info.model and set(info.flags) <= set(mgid.precision.REPORTED_FLAGS)
    assert info.aten_capability == torch.backends.cpu.get_cpu_capability()
    record = info.to_dict()
    assert record["model"] == info.model and record["native_bf16"] == info.native_bf16
    assert info.model in info.describe()


def _recipe_step_seconds(precision: str, channels_last: bool, steps: int = 3) -> float:
    """Median seconds of a training step of the quick recipe's network and objective (its batch and crop)."""
    import time

    from mgid.losses import MGIDLoss
    from mgid.train.objective import MGIDObjective, optimizer_step

    cfg = resolve_config("quick")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = MGIDNet(cfg.model, torch.Generator().manual_seed(0)).to(memory_format=fmt).train()
    objective = MGIDObjective(net, MGIDLoss(cfg.loss), precision)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(1)
    shape = (cfg.batch_size, 3, cfg.crop_size, cfg.crop_size)
    a = (torch.rand(shape, generator=g) * 2 - 1).contiguous(memory_format=fmt)
    b = (torch.rand(shape, generator=g) * 2 - 1).contiguous(memory_format=fmt)
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        total, _, _ = objective(a, b)
        optimizer_step(optimizer, total)
        if i:  # the first step warms up
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def test_quick_recipe_is_never_slower_than_fp32_on_this_cpu():
    """What the quick recipe runs here (its arithmetic resolved on this CPU) is not slower than plain fp32:
    a forced bf16 on a CPU without native bf16 was about 10x slower (issue 17). Timed at the recipe's own
    network and shape, one thread, the faster of two tries each; a 1.5x margin for a shared machine's noise."""

    cfg = resolve_config("quick")
    auto = mgid.precision.resolve_arithmetic(cfg.precision, mgid.precision.CHANNELS_LAST_SETTINGS[cfg.channels_last],
                                             "cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fast = min(_recipe_step_seconds(auto.precision, auto.channels_last) for _ in range(2))
        plain = min(_recipe_step_seconds("fp32", False) for _ in range(2))
    finally:
        torch.set_num_threads(threads)
    assert fast <= 1.5 * plain, f"{auto.describe()}: {fast:.3f} s per step vs fp32 {plain:.3f} s"
