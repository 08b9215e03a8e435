"""The fast path changes speed only: same losses with it on and off, and torch.compile failures fall back cleanly.

The models are tiny (width 8, 32 px) so the tests run in seconds; the
switches exercise the same code paths as the full-size networks.
"""
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO

from kaggle_gan.config import resolve
from kaggle_gan.nets.models import build_models
from kaggle_gan.training.loop import Trainer, epoch_order


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Tiny networks run fastest on one thread, and on a shared CPU two threads can be 10x slower."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


SMALL = {"model.g_width": 8, "model.d_width": 8, "model.resolution": 32, "train.batch_size": 16,
         "train.ckpt_minutes": 100.0}


def losses(prepared, run_dir, preset, steps, **overrides):
    """Per-step losses (as the host would read them) and the final weights of ``steps`` steps."""
    t = Trainer(resolve(preset, {**SMALL, **overrides}), prepared, run_dir, device="cpu", resume=False,
                progress=False)
    out = []
    order = None
    for step in range(steps):
        epoch, position = divmod(step, t.steps_per_epoch)
        if position == 0:
            order = epoch_order(t.cfg.train.seed, epoch, len(t.data))
        stats = t.train_step(t._batch(order, position))
        out.append({k: v.item() for k, v in stats.items()})
        t.step += 1
    return out, {**t.gan.G.state_dict(), **{f"D.{k}": v for k, v in t.gan.D.state_dict().items()}}


def critic_steps(preset):
    return resolve(preset).loss.n_critic


@pytest.mark.parametrize("preset", ["baseline", "strong"])
def test_fast_path_on_and_off_learn_the_same_thing(preset, prepared, tmp_path):
    """50 fp32 steps from one seed: every logged loss agrees to 1e-4 relative."""
    fast, w_fast = losses(prepared, tmp_path / "fast", preset, 50, **{"train.fast": True})
    slow, w_slow = losses(prepared, tmp_path / "slow", preset, 50, **{"train.fast": False})
    assert len(fast) == len(slow) == 50
    assert sum("g_loss" in s for s in fast) == 50 // critic_steps(preset)
    for step, (a, b) in enumerate(zip(fast, slow)):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), (step, k)
    moved = [k for k in w_fast if w_fast[k].is_floating_point() and not torch.equal(w_fast[k], w_slow[k])]
    for k in moved:
        torch.testing.assert_close(w_fast[k], w_slow[k], rtol=1e-4, atol=1e-5)


@pytest.fixture
def broken_backend():
    """A dynamo backend whose compiler fails, as inductor does without a working C++ toolchain."""
    from torch._dynamo import register_backend
    from torch._dynamo.backends.registry import _COMPILER_FNS

    name = "kaggle_gan_test_broken"
    if name not in _COMPILER_FNS:
        @register_backend(name=name)
        def broken(gm, example_inputs):
            raise RuntimeError("no compiler on this machine")
    yield name
    torch._dynamo.reset()


@pytest.mark.parametrize("preset", ["baseline", "strong"])
def test_compile_failing_at_the_first_step_falls_back_to_the_eager_run(preset, prepared, tmp_path, broken_backend,
                                                                        monkeypatch, capsys):
    monkeypatch.setenv("KAGGLE_GAN_COMPILE_BACKEND", broken_backend)
    compiled, w_compiled = losses(prepared, tmp_path / "c", preset, 6, **{"train.compile": True})
    assert "torch.compile failed at the first step" in capsys.readouterr().out
    eager, w_eager = losses(prepared, tmp_path / "e", preset, 6, **{"train.compile": False})
    assert compiled == eager  # the failed attempt left no trace: same noise, same updates
    for k in w_eager:
        assert torch.equal(w_compiled[k], w_eager[k]), k


def test_boss_compiles_with_inductor_without_falling_back(prepared, tmp_path, capsys):
    """Real inductor, no stand-in: spectral norm's in-place power iteration once broke the compiled
    critic's backward, so every boss run fell back to eager after about a minute of compiling. The
    critic now stays eager (and says so); the compiled generator learns what the eager one does."""
    # Two critic passes: compile only wraps G, so one pass or two changes nothing about compiling, but with
    # one pass a hinge margin that rounding tips over moved g_loss by 1.2e-3 relative at step 1 (1e-6 with two)
    two = {"train.joint_critic": False}
    torch._dynamo.reset()
    compiled, w_compiled = losses(prepared, tmp_path / "c", "boss-resnet", 3, **{"train.compile": True, **two})
    out = capsys.readouterr().out
    torch._dynamo.reset()
    assert "torch.compile failed" not in out and "unavailable" not in out, out
    assert "the critic runs eagerly (spectral norm)" in out
    eager, w_eager = losses(prepared, tmp_path / "e", "boss-resnet", 3, **{"train.compile": False, **two})
    for step, (a, b) in enumerate(zip(compiled, eager)):
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-3, abs=1e-5), (step, k)
    # Compared: the critic's weights, and G's convolution and linear weights. Not G's biases, which
    # feed a batch norm, directly or through the residual sum: their gradient is zero up to rounding,
    # which Adam turns into lr-sized steps of either sign, and that noise moves the batch norms'
    # running statistics too. The same holds for single weights whose gradient is near zero: Adam's
    # early steps are about +-lr whatever the gradient's size, so two runs whose rounding differs can
    # part by up to 2 lr a step in such elements (seen: 4.5e-4 in G's input layer after 3 steps).
    cfg = resolve("boss-resnet", SMALL)
    G = build_models(cfg.model)[0]
    checked = [f"{name}.weight" for name, m in G.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    checked += [k for k in w_eager if k.startswith("D.") and w_eager[k].is_floating_point()]
    assert len(checked) > 10
    for k in checked:
        lr = cfg.optim.lr_d if k.startswith("D.") else cfg.optim.lr_g
        torch.testing.assert_close(w_compiled[k], w_eager[k], rtol=1e-3, atol=2 * lr * 3, msg=k)


def test_compile_with_an_unknown_backend_runs_eagerly(prepared, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KAGGLE_GAN_COMPILE_BACKEND", "no_such_backend")
    compiled, _ = losses(prepared, tmp_path / "c", "baseline", 2, **{"train.compile": True})
    assert "torch.compile unavailable" in capsys.readouterr().out
    eager, _ = losses(prepared, tmp_path / "e", "baseline", 2, **{"train.compile": False})
    assert compiled == eager


def test_omp_num_threads_sets_the_cpu_threads(monkeypatch):
    from kaggle_gan.core.runtime import available_cores, resolve_device

    resolve_device("cpu")
    assert torch.get_num_threads() == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    resolve_device("cpu")
    assert torch.get_num_threads() == available_cores()


def test_the_generator_step_leaves_the_critic_trainable(prepared, tmp_path):
    t = Trainer(resolve("baseline", SMALL), prepared, tmp_path / "r", device="cpu", resume=False, progress=False)
    t.train_step(t._batch(torch.randperm(len(t.data)), 0))
    assert all(p.requires_grad for p in t.gan.D.parameters())


def test_bench_runs_and_writes_its_table(tmp_path):
    """``make bench`` end to end, shrunk: every task appears with a positive speed and a ratio."""
    out = tmp_path / "bench.csv"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench.py"), "--device", "cpu", "--data", "synthetic",
         "--images", "64", "--batch", "16", "--resolution", "32", "--width", "8", "--steps", "1", "--windows", "1",
         "--warmup", "1", "--count", "20", "--gen-repeats", "1", "--csv", str(out), "--work", str(tmp_path / "w")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    import pandas as pd

    table = pd.read_csv(out)
    assert set(table.task) == {"train baseline", "train strong", "generate 20", "prepare 64"}
    assert (table.img_per_s > 0).all()
    ours = table[(table.pipeline == "ours") & table.task.str.startswith("train")]
    assert ours.ratio_vs_reference.notna().all() and len(ours) == 2
    assert "ratio_vs_reference" in done.stdout
    train_rows = table[table.task.str.startswith("train")]
    assert (train_rows.gflop_per_img > 0).all() and (train_rows.share_of_peak > 0).all()
    for preset in ("baseline", "strong"):  # our generator step skips the critic's weight gradients
        rows = train_rows[train_rows.task == f"train {preset}"].set_index("pipeline")
        assert rows.gflop_per_img["ours"] < rows.gflop_per_img["reference"]


def test_flops_are_counted_forward_backward_and_through_a_gradient_penalty():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from flops import count_flops

    m, k, n = 4, 5, 3
    layer = torch.nn.Linear(k, n, bias=False)
    x = torch.randn(m, k, requires_grad=True)
    assert count_flops(lambda: layer(x)) == 2 * m * k * n
    # backward: the input's gradient and the weight's, each as large as the forward product
    assert count_flops(lambda: layer(x).sum().backward()) == 6 * m * k * n

    def penalty():  # WGAN-GP's double backward, which the stock module tracker cannot follow
        (g,) = torch.autograd.grad(layer(x).sum(), x, create_graph=True)
        g.pow(2).sum().backward()

    # the forward product, the input's gradient (ones @ W), and W's gradient through that gradient
    assert count_flops(penalty) == 6 * m * k * n
