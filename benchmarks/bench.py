"""Speed of our pipeline against the homework's sample code, side by side on one device (``make bench``).

Measures, in one process:

* training, for each preset: the sample-style loop (``benchmarks/reference.py``:
  per-item PIL decoding, torchvision transforms, a 2-worker DataLoader,
  ``.item()`` every step, fp32, default memory format) against our
  ``Trainer`` (device-resident uint8 data, no per-step sync, the fast path),
  same networks, loss math, batch size and device. Windows of ``--steps``
  steps alternate between the two after ``--warmup`` untimed steps each; the
  figure is the median images/s over ``--windows`` windows;
* generation of ``--count`` images: the sample's ``inference`` (one forward
  pass, one ``save_image`` per file) against ``kaggle_gan.sampling.generate``;
* prepare of up to ``--images`` JPEG files (``kaggle_gan.data.prepare.prepare``).

Peak memory is CUDA memory allocated on a GPU, and the resident set size of
this process and its children (the DataLoader workers) on a CPU.

The faces are the project's dev zip extracted to a temporary folder when it
exists, synthetic 96x96 JPEGs otherwise (``--data synthetic`` forces those).

    .venv/bin/python benchmarks/bench.py                 # CPU: a few minutes; GPU: a few minutes
    .venv/bin/python benchmarks/bench.py --steps 50 --windows 5 --csv bench.csv
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from a clean clone
sys.path.insert(0, str(ROOT / "benchmarks"))

from flops import count_flops, matmul_peak  # noqa: E402
from reference import ReferenceLoop, reference_generate  # noqa: E402

from kaggle_gan.config import resolve  # noqa: E402
from kaggle_gan.core.io import atomic_path  # noqa: E402
from kaggle_gan.core.runtime import available_cores, resolve_device  # noqa: E402
from kaggle_gan.data.prepare import prepare  # noqa: E402
from kaggle_gan.nets.models import build_models  # noqa: E402
from kaggle_gan.sampling.generate import generate  # noqa: E402
from kaggle_gan.training.checkpoint import save_generator  # noqa: E402
from kaggle_gan.training.loop import Trainer, epoch_order  # noqa: E402
from kaggle_gan.training.precision import Precision, choose_precision  # noqa: E402

DEV_ZIP = ROOT.parent / "shared" / "data" / "anime-faces-dev.zip"
# (steps per window, windows, warm-up steps): a GPU step takes milliseconds, a CPU step seconds
PLAN = {"cuda": (50, 5, 20), "cpu": (2, 3, 1)}


# --- memory ----------------------------------------------------------------------

class PeakMemory:
    """Peak memory per label.

    On a GPU: CUDA memory allocated, exact per phase. On a CPU every pipeline
    shares this process, so the figure is the *growth* of the resident set
    (this process + children, such as DataLoader workers) over the phase:
    building and warming up a training pipeline, or one generate/prepare run.
    RSS rarely shrinks, so the growth is close to the phase's own peak.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.peaks: Dict[str, float] = {}
        self.kind = "cuda_allocated" if device.type == "cuda" else "host_rss_growth"
        self._label: Optional[str] = None
        self._start = 0.0
        self._stop = threading.Event()
        if self.kind == "host_rss_growth":  # ru_maxrss never goes down, so it cannot tell phases apart
            threading.Thread(target=self._sample, daemon=True).start()

    @staticmethod
    def _rss_mib() -> float:
        try:
            import psutil

            me = psutil.Process()
            procs = [me] + me.children(recursive=True)
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            return total / 2**20
        except ImportError:  # psutil is optional: this process alone
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _sample(self) -> None:
        # sparse sampling, and only inside a phase: scanning /proc holds the GIL the timed loop needs
        while not self._stop.wait(0.1):
            label = self._label
            if label is not None:
                self._note(label, self._rss_mib() - self._start)

    def _note(self, label: str, mib: float) -> None:
        self.peaks[label] = max(self.peaks.get(label, 0.0), mib)

    def begin(self, label: str) -> None:
        if self.kind == "cuda_allocated":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._start = self._rss_mib()
        self._label = label

    def end(self) -> None:
        label, self._label = self._label, None
        if self.kind == "cuda_allocated":
            torch.cuda.synchronize(self.device)
            self._note(label, torch.cuda.max_memory_allocated(self.device) / 2**20)
        else:
            self._note(label, self._rss_mib() - self._start)

    def close(self) -> None:
        self._stop.set()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- data ------------------------------------------------------------------------

def face_files(data: str, folder: Path, count: int) -> List[Path]:
    """Up to ``count`` 96x96 JPEGs in ``folder``: the dev zip's members, or synthetic faces."""
    folder.mkdir(parents=True, exist_ok=True)
    zip_path = Path(data) if data != "synthetic" else None
    files: List[Path] = []
    if zip_path is not None and zip_path.is_file():
        with zipfile.ZipFile(zip_path) as zf:
            members = [m for m in zf.namelist() if m.lower().endswith((".jpg", ".jpeg"))][:count]
            for i, m in enumerate(members):
                files.append(folder / f"{i}.jpg")
                files[-1].write_bytes(zf.read(m))
        print(f"bench: {len(files)} faces from {zip_path}")
        return files
    if zip_path is not None and data != str(DEV_ZIP):
        raise SystemExit(f"bench: --data {data} is not a zip file; pass the dev zip or 'synthetic'")
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:96] / 96.0
    for i in range(count):  # smooth colour fields with a disc: JPEG-sized like real faces, not noise
        img = rng.uniform(0, 255, 3) + 80 * np.stack([np.sin(6 * xx + rng.uniform(0, 6)), np.cos(5 * yy), xx * yy], -1)
        cx, cy, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.3)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
        files.append(folder / f"{i}.jpg")
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(files[-1], quality=90)
    print(f"bench: {len(files)} synthetic faces (no dev zip at {DEV_ZIP})")
    return files


# --- training --------------------------------------------------------------------

@dataclass
class Ours:
    """Our trainer, stepped the way ``Trainer.run`` steps it, minus the files it writes."""

    trainer: Trainer
    order: Optional[torch.Tensor] = None
    epoch: int = -1
    sums: Dict[str, torch.Tensor] = field(default_factory=dict)

    def steps(self, n: int) -> Dict[str, float]:
        t = self.trainer
        for _ in range(n):
            epoch, position = divmod(t.step, t.steps_per_epoch)
            if epoch != self.epoch:
                self.order, self.epoch = epoch_order(t.cfg.train.seed, epoch, len(t.data)).to(t.data.device), epoch
            stats = t.train_step(t._batch(self.order, position))
            for k, v in stats.items():
                self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
            if not t.cfg.train.fast:  # as Trainer.run does with the fast path off
                [v.item() for v in stats.values()]
            t.step += 1
        # the one read-back per log interval that Trainer.run does (it logs these sums as means)
        totals = {k: v.item() for k, v in self.sums.items()}
        self.sums = {}
        return totals


@dataclass
class Result:
    task: str
    pipeline: str
    img_per_s: float
    windows: List[float]
    peak_mib: float = float("nan")
    ratio: float = float("nan")
    gflop_per_img: float = float("nan")  # matrix products and convolutions of one training step (flops.py)
    peak_gflops: float = float("nan")  # the device's matrix-multiply rate in the precision this pipeline computes in

    @property
    def achieved_gflops(self) -> float:
        return self.gflop_per_img * self.img_per_s


def bench_training(preset: str, args, device: torch.device, files: List[Path], prepared: Path, work: Path,
                   memory: PeakMemory, peaks: Dict[Optional[torch.dtype], float]) -> List[Result]:
    overrides = {"train.batch_size": args.batch, "model.resolution": args.resolution, "train.seed": 2022}
    if args.width:
        overrides.update({"model.g_width": args.width, "model.d_width": args.width})
    steps, windows, warmup = args.steps, args.windows, args.warmup
    pipelines: Dict[str, Callable[[int], object]] = {}
    closers = []
    cycle = resolve(preset).loss.n_critic  # steps with exactly one generator step among them
    per_image = 1e9 * cycle * args.batch
    work_done: Dict[str, tuple] = {}  # pipeline -> (GFLOP per image, peak GFLOP/s of its precision)

    cpu_memory = memory.kind != "cuda_allocated"
    if cpu_memory:
        memory.begin(f"{preset}/reference")
    ref = ReferenceLoop(resolve(preset, overrides), files, device, workers=args.workers)
    pipelines["reference"] = lambda n: [ref.step() for _ in range(n)]
    closers.append(ref.close)
    pipelines["reference"](warmup)  # warm-up: worker start-up, cudnn autotuning, allocator growth
    work_done["reference"] = (count_flops(lambda: pipelines["reference"](cycle)) / per_image, peaks[None])
    if cpu_memory:
        memory.end()
    variants = {"ours": {"train.compile": args.compile}}
    if args.ablate:
        variants["ours, fast off"] = {"train.fast": False}
    if args.joint:
        variants["ours, two critic passes"] = {"train.joint_critic": False}
    for name, extra in variants.items():
        if cpu_memory:
            memory.begin(f"{preset}/{name}")
        cfg = resolve(preset, {**overrides, **extra, "train.amp": "auto" if extra.get("train.fast", True) else "off"})
        t = Trainer(cfg, prepared, work / "runs" / f"{preset}-{len(pipelines)}", device=str(device), resume=False,
                    progress=False)
        t.gan.G.train()
        t.gan.D.train()
        pipelines[name] = Ours(t).steps
        pipelines[name](warmup)  # and compilation, when it is on
        # the counter sees eager dispatch: a compiled pipeline is counted on an eager twin (same arithmetic)
        counted = Ours(Trainer(resolve(preset, {**overrides, **extra, "train.compile": False}), prepared,
                               work / "runs" / f"{preset}-flops", device=str(device), resume=False, progress=False)
                       ).steps if t.cfg.train.compile else pipelines[name]
        work_done[name] = (count_flops(lambda: counted(cycle)) / per_image, peaks[t.gan.precision.dtype])
        if cpu_memory:
            memory.end()

    names = list(pipelines)
    rates: Dict[str, List[float]] = {n: [] for n in names}
    for w in range(windows):
        for n in (names if w % 2 == 0 else names[::-1]):  # alternate who goes first, against drift
            # no re-fill: the reference's workers prefetch during the other windows, which only flatters it
            _sync(device)
            if not cpu_memory:
                memory.begin(f"{preset}/{n}")
            start = time.perf_counter()
            pipelines[n](steps)
            _sync(device)
            rates[n].append(steps * args.batch / (time.perf_counter() - start))
            if not cpu_memory:
                memory.end()
        print(f"bench: {preset} window {w + 1}/{windows}: "
              + ", ".join(f"{n} {rates[n][-1]:.1f} img/s" for n in names), flush=True)
    for close in closers:
        close()
    base = statistics.median(rates["reference"])
    out = []
    for n in names:
        med = statistics.median(rates[n])
        out.append(Result(f"train {preset}", n, med, rates[n], memory.peaks.get(f"{preset}/{n}", float("nan")),
                          med / base, *work_done[n]))
    return out


# --- generation and prepare --------------------------------------------------------

def bench_generation(args, device: torch.device, work: Path, memory: PeakMemory) -> List[Result]:
    cfg = resolve("baseline", {"model.resolution": args.resolution,
                               **({"model.g_width": args.width} if args.width else {})})
    torch.manual_seed(0)
    G, _ = build_models(cfg.model)  # untrained weights cost exactly what trained ones cost
    gen_file = save_generator(G.state_dict(), cfg.to_dict(), 0, work / "gen" / "generator.pt")
    G = G.to(device)
    rates: Dict[str, List[float]] = {"reference": [], "ours": []}
    for r in range(args.gen_repeats):
        for name in (("reference", "ours") if r % 2 == 0 else ("ours", "reference")):
            out = work / "gen" / f"{name}-{r}"
            memory.begin(f"generate/{name}")
            start = time.perf_counter()
            if name == "ours":
                generate(gen_file, out, n=args.count, seed=r, size=args.resolution, device=str(device))
            else:
                reference_generate(G, out, args.count, cfg.model.z_dim, device)
                _sync(device)
            rates[name].append(args.count / (time.perf_counter() - start))
            memory.end()
            shutil.rmtree(out, ignore_errors=True)
    base = statistics.median(rates["reference"])
    return [Result(f"generate {args.count}", n, statistics.median(v), v,
                   memory.peaks.get(f"generate/{n}", float("nan")), statistics.median(v) / base)
            for n, v in rates.items()]


def bench_prepare(files: List[Path], args, work: Path, memory: PeakMemory) -> Result:
    rates = []
    for r in range(args.prepare_repeats):
        memory.begin("prepare")
        start = time.perf_counter()
        prepare(str(files[0].parent), work / f"prepare-{r}", size=args.resolution, force=True)
        rates.append(len(files) / (time.perf_counter() - start))
        memory.end()
    return Result(f"prepare {len(files)}", "ours", statistics.median(rates), rates,
                  memory.peaks.get("prepare", float("nan")))


# --- report ----------------------------------------------------------------------

def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {available_cores()} cores, {torch.get_num_threads()} threads"


def _num(x: float, digits: int):
    return round(x, digits) if x == x else ""


def device_peaks(device: torch.device) -> Dict[Optional[torch.dtype], float]:
    """Matrix-multiply GFLOP/s in fp32 (None), and in the autocast precision our loop uses on a GPU."""
    peaks = {None: matmul_peak(device)}
    amp = choose_precision("auto", device).dtype
    if amp is not None:
        peaks[amp] = matmul_peak(device, amp)
    return peaks


def report(results: List[Result], args, device: torch.device, memory: PeakMemory, seconds: float,
           peaks: Dict[Optional[torch.dtype], float]) -> str:
    import pandas as pd

    rows = [{
        "device": device_name(device), "task": r.task, "pipeline": r.pipeline,
        "img_per_s": round(r.img_per_s, 2), "ratio_vs_reference": round(r.ratio, 2) if r.ratio == r.ratio else "",
        f"peak_{memory.kind}_mib": round(r.peak_mib), "windows_img_per_s": " ".join(f"{x:.2f}" for x in r.windows),
        "gflop_per_img": _num(r.gflop_per_img, 3), "achieved_gflops": _num(r.achieved_gflops, 1),
        "share_of_peak": _num(r.achieved_gflops / r.peak_gflops, 3), "peak_gflops": _num(r.peak_gflops, 0),
        "batch": args.batch, "resolution": args.resolution, "steps_per_window": args.steps,
        "torch": torch.__version__,
    } for r in results]
    df = pd.DataFrame(rows)
    csv = Path(args.csv)
    with atomic_path(csv, suffix=".csv") as tmp:
        df.to_csv(tmp, index=False)
    shown = df[["task", "pipeline", "img_per_s", "ratio_vs_reference", f"peak_{memory.kind}_mib",
                "gflop_per_img", "achieved_gflops", "share_of_peak"]]
    text = (f"device: {device_name(device)}; torch {torch.__version__}; batch {args.batch}, {args.resolution}px; "
            f"{args.windows} windows of {args.steps} steps after {args.warmup} warm-up; {seconds:.0f} s in all\n"
            f"matrix-multiply peak: " + ", ".join(f"{Precision(d).name} {v:.0f} GFLOP/s" for d, v in peaks.items())
            + (" (fp32 as TF32, which cuDNN's fp32 convolutions use)" if device.type == "cuda" else "")
            + " (share_of_peak: achieved / the peak of the pipeline's precision)\n"
            + shown.to_string(index=False) + f"\nwritten: {csv}")
    return text


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--presets", nargs="+", default=["baseline", "strong"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--width", type=int, default=0, help="model width for both networks (0: the preset's, 64)")
    p.add_argument("--steps", type=int, default=None, help="steps per timed window (default: 50 on GPU, 2 on CPU)")
    p.add_argument("--windows", type=int, default=None, help="timed windows per pipeline (default: 5 GPU, 3 CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 20 GPU, 1 CPU)")
    p.add_argument("--quick", action="store_true", help="the CPU plan (2 steps x 3 windows) on any device")
    p.add_argument("--workers", type=int, default=2, help="the reference DataLoader's workers (the sample's 2)")
    p.add_argument("--compile", action="store_true", help="our loop with train.compile=true")
    p.add_argument("--ablate", action="store_true", help="also time our loop with train.fast=false")
    p.add_argument("--joint", action="store_true", help="also time our loop with train.joint_critic=false "
                   "(real and fake in two critic passes; only differs for critics without batch norm)")
    p.add_argument("--data", default=str(DEV_ZIP), help="the dev zip of 96x96 faces, or 'synthetic'")
    p.add_argument("--images", type=int, default=10_000, help="faces to extract (and prepare)")
    p.add_argument("--count", type=int, default=1000, help="images to generate")
    p.add_argument("--gen-repeats", type=int, default=3)
    p.add_argument("--prepare-repeats", type=int, default=1)
    p.add_argument("--skip", nargs="*", default=[], choices=["train", "generate", "prepare"])
    p.add_argument("--csv", default="bench.csv")
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed after)")
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    plan = PLAN["cpu" if args.quick or device.type != "cuda" else "cuda"]
    args.steps = args.steps or plan[0]
    args.windows = args.windows or plan[1]
    args.warmup = plan[2] if args.warmup is None else args.warmup
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="kaggle-gan-bench-"))
    memory = PeakMemory(device)
    print(f"bench: {device_name(device)}; torch {torch.__version__}; scratch {work}", flush=True)
    began = time.perf_counter()
    try:
        files = face_files(args.data, work / "jpegs", args.images)
        results: List[Result] = []
        if "prepare" not in args.skip:
            prepared_result = [bench_prepare(files, args, work, memory)]
            prepared = work / "prepare-0"
        else:
            prepared_result, prepared = [], work / "prepared"
            prepare(str(files[0].parent), prepared, size=args.resolution)
        peaks = device_peaks(device)
        if "train" not in args.skip:
            for preset in args.presets:
                results += bench_training(preset, args, device, files, prepared, work, memory, peaks)
        results += prepared_result
        if "generate" not in args.skip:
            results += bench_generation(args, device, work, memory)
        print(report(results, args, device, memory, time.perf_counter() - began, peaks))
    finally:
        memory.close()
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
