"""The main job: the whole kd-depth flow on the built-in synthetic world, one stage after another.

    synth → teacher → baseline → student → evaluate → export → ros → report

Each stage writes into its own folder under the output directory and, last, a ``stage.json``
holding its settings' fingerprint and its results. A rerun reuses every finished stage whose
settings did not change, so an interrupted demo continues where it stopped. Stage settings come
from ``config/demo.yaml`` (presets ``full`` and ``fast``); training stages run the very same
configs as ``kd-depth train`` / ``kd-depth distill`` with a few ``key=value`` overrides.

The ROS stage runs in a child process (``kd_depth_ros.demo_replay``): this package never imports ROS.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kd_depth_core.utils.atomic import write_text_atomic

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
STAGES = ("synth", "teacher", "baseline", "student", "evaluate", "export", "ros", "report")


def find_config_dir() -> Path:
    """config/ of a source checkout, or share/kd_depth_ros/config of an installed package."""
    candidates = [PACKAGE_ROOT / "config"]
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory("kd_depth_ros")) / "config")
    except Exception:  # noqa: BLE001 — not a ROS install: the source tree is the only place
        pass
    prefix = Path(sys.prefix) / "share" / "kd_depth_ros" / "config"
    candidates.append(prefix)
    for path in candidates:
        if (path / "demo.yaml").is_file():
            return path
    raise FileNotFoundError("config/demo.yaml not found next to the package; run the demo from the repository "
                            f"(looked in: {', '.join(str(c) for c in candidates)})")


def load_preset(name: str, config_dir: Path | None = None) -> dict[str, Any]:
    """The stage settings of preset ``name`` from config/demo.yaml."""
    config_dir = config_dir or find_config_dir()
    presets = yaml.safe_load((config_dir / "demo.yaml").read_text())
    if name not in presets:
        raise ValueError(f"{config_dir / 'demo.yaml'}: no preset {name!r}; presets: {', '.join(presets)}")
    return presets[name]


def fingerprint(settings: Any) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class DemoContext:
    """Where things go and what earlier stages produced."""

    out: Path
    preset: dict[str, Any]
    preset_name: str
    config_dir: Path
    device: str = "auto"
    progress: bool = True
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    def stage_dir(self, stage: str) -> Path:
        return self.out / stage

    @property
    def data_root(self) -> Path:
        return self.stage_dir("synth") / "street"


def _say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def run_stage(ctx: DemoContext, stage: str, body: Callable[[DemoContext, Path, dict[str, Any]], dict[str, Any]],
              settings: dict[str, Any], depends: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run ``body`` unless ``stage.json`` records the same settings (and the same upstream results)."""
    folder = ctx.stage_dir(stage)
    marker = folder / "stage.json"
    key = fingerprint({"settings": settings, "upstream": [ctx.results[d].get("fingerprint") for d in depends]})
    if marker.is_file():
        try:
            done = json.loads(marker.read_text())
        except json.JSONDecodeError:
            done = {}
        if done.get("fingerprint") == key:
            _say(f"{stage}: reusing the finished stage in {folder}")
            ctx.results[stage] = done
            return done
    started = folder / "settings.json"
    if folder.exists() and not (started.is_file() and json.loads(started.read_text()).get("fingerprint") == key):
        # Left by a run with other settings: its checkpoints must not be resumed into this one.
        shutil.rmtree(folder)
    _say(f"{stage}: {'continuing' if started.is_file() else 'running'} (output in {folder})")
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(started, json.dumps({"fingerprint": key, "settings": settings}, indent=2, default=str))
    start = time.perf_counter()
    result = body(ctx, folder, settings)
    record = {"stage": stage, "fingerprint": key, "seconds": round(time.perf_counter() - start, 1), **result}
    write_text_atomic(marker, json.dumps(record, indent=2, default=str))
    ctx.results[stage] = record
    print(f"{stage}: done in {record['seconds']:.0f} s", flush=True)
    return record


# --------------------------------------------------------------------------- stages
def stage_synth(ctx: DemoContext, folder: Path, settings: dict[str, Any]) -> dict[str, Any]:
    from kd_depth_core.data.synthetic.generate import SynthSpec, generate_dataset

    spec = SynthSpec(preset="street", **settings)
    summary = generate_dataset(ctx.data_root, spec, workers=min(2, os.cpu_count() or 1), overwrite=True,
                               progress=ctx.progress)
    return {"root": str(ctx.data_root), "frames": spec.sequences * spec.frames,
            "summary": getattr(summary, "__dict__", str(summary))}


def _train(ctx: DemoContext, folder: Path, settings: dict[str, Any], extra: list[str]) -> dict[str, Any]:
    from kd_depth_core.config import load_train_config
    from kd_depth_core.train.train_cli import train_from_config

    overrides = [f"data.root={ctx.data_root}", f"train.out_dir={folder / 'run'}", "train.resume=auto",
                 f"train.device={ctx.device}"] + list(settings.get("overrides", [])) + extra
    cfg = load_train_config(ctx.config_dir / "train" / settings["config"], overrides)
    result = train_from_config(cfg)
    if result.model_path is None:
        raise RuntimeError(f"{settings['config']}: training finished without exporting a model")
    return {"model": str(result.model_path), "steps": result.step, "nonfinite_steps": result.nonfinite_steps,
            "log": str(folder / "run" / "log.jsonl"), "val": result.val_metrics, "config": settings["config"]}


def stage_train(ctx: DemoContext, folder: Path, settings: dict[str, Any]) -> dict[str, Any]:
    return _train(ctx, folder, settings, [])


def stage_student(ctx: DemoContext, folder: Path, settings: dict[str, Any]) -> dict[str, Any]:
    teacher = ctx.results["teacher"]["model"]
    return _train(ctx, folder, settings, [f"task.kwargs.teacher_path={teacher}",
                                          f"task.kwargs.cache_dir={folder / 'pseudo_labels'}"])


MODEL_STAGES = {"teacher": "MS-DPT teacher", "student": "KD student", "baseline": "ResNet18 baseline"}


def stage_evaluate(ctx: DemoContext, folder: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Teacher, student and baseline on the held-out test sequences: one table, one comparison figure."""
    from kd_depth_core.data.benchmarks import open_benchmark
    from kd_depth_core.eval import plots
    from kd_depth_core.eval.evaluate import evaluate
    from kd_depth_core.eval.protocols import get_protocol
    from kd_depth_core.eval.report import write_json
    from kd_depth_core.inference.predictor import DepthPredictor
    from kd_depth_core.models.flops import count_parameters, model_flops

    results: dict[str, Any] = {}
    visuals: dict[str, dict[str, Any]] = {}  # image name -> {model label: VisualSample}
    for stage, label in MODEL_STAGES.items():
        path = ctx.results[stage]["model"]
        predictor = DepthPredictor(path, device=ctx.device)
        metric = predictor.metadata.scale_kind == "metric"
        protocol = get_protocol("sequence", max_depth=float(settings.get("max_depth", 80.0)),
                                median_scaling=not metric)
        samples = open_benchmark("sequence", ctx.data_root, split="test", stride=int(settings.get("stride", 1)),
                                 limit=settings.get("max_images"))
        result = evaluate(lambda image, K=None, p=predictor: p.predict(image, K=K), samples, protocol, label=label,
                          num_visuals=int(settings.get("panels", 3)), progress=ctx.progress)
        model, meta = _load_network(path)
        flops, _ = model_flops(model, 192, 640)
        data = {**result.to_dict(), "model": path, "metric": metric, "params_m": count_parameters(model) / 1e6,
                "gflops_640x192": flops / 1e9}
        write_json(folder / f"{stage}.json", data)
        results[stage] = {key: data[key] for key in ("label", "mean", "metric", "params_m", "gflops_640x192",
                                                     "scale_ratio", "predict_ms", "uncertainty")}
        for visual in result.visuals:
            visuals.setdefault(visual.name, {})[label] = visual
    results["sgbm"] = _evaluate_sgbm(ctx, settings)
    rows = [row for row in visuals.values() if len(row) == len(MODEL_STAGES)]
    figure = plots.save_figure(plots.comparison_figure(rows), folder / "comparison.png") if rows else None
    return {"models": results, "comparison": str(figure) if figure else None}


def _evaluate_sgbm(ctx: DemoContext, settings: dict[str, Any]) -> dict[str, Any]:
    """The classical floor on the same frames: OpenCV SGBM with a left-right check and hole filling."""
    from kd_depth_core.classical.sgbm import SGBMPredictor, SGBMSettings
    from kd_depth_core.data.benchmarks import open_benchmark
    from kd_depth_core.eval.evaluate import evaluate
    from kd_depth_core.eval.protocols import get_protocol

    max_depth = float(settings.get("max_depth", 80.0))
    sgbm = SGBMPredictor(SGBMSettings(min_depth=float(settings.get("sgbm_min_depth", 2.0))), max_depth=max_depth)
    samples = open_benchmark("sequence", ctx.data_root, split="test", stride=int(settings.get("stride", 1)),
                             limit=settings.get("max_images"), right=True)
    result = evaluate(lambda image, K=None, right=None, baseline=None: sgbm.predict(image, right, K, baseline),
                      samples, get_protocol("sequence", max_depth=max_depth, median_scaling=False),
                      label="OpenCV SGBM (no learning)", progress=ctx.progress)
    return {"label": result.label, "mean": result.mean, "metric": True, "params_m": None, "gflops_640x192": None,
            "scale_ratio": None, "predict_ms": result.predict_ms, "uncertainty": None}


def _load_network(path: str):
    from kd_depth_core.models.io import load_model

    return load_model(path, device="cpu")


def stage_export(ctx: DemoContext, folder: Path, settings: dict[str, Any]) -> dict[str, Any]:
    from kd_depth_core.inference.export import export_model, verify_export

    model, meta = _load_network(ctx.results["student"]["model"])
    path = export_model(model, meta, folder / "student.onnx", "onnx")
    check = verify_export(path, model, meta)
    tolerance = float(settings.get("rel_tolerance", 1e-3))
    if not check.passed(tolerance):
        raise RuntimeError(f"{path}: ONNX output differs from PyTorch beyond {tolerance}: {check}")
    return {"onnx": str(path), "check": dataclasses.asdict(check), "rel_tolerance": tolerance}


def stage_ros(ctx: DemoContext, folder: Path, settings: dict[str, Any]) -> dict[str, Any]:
    command = [sys.executable, "-m", "kd_depth_ros.demo_replay", "--model", ctx.results["student"]["model"],
               "--data", str(ctx.data_root), "--out", str(folder / "ros.json"),
               "--frames", str(settings.get("frames", 50)), "--rate", str(settings.get("rate_hz", 10.0)),
               "--device", ctx.device, "--params-file", str(ctx.config_dir / "mono_depth.yaml")]
    env = dict(os.environ)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    completed = subprocess.run(command, env=env, timeout=float(settings.get("timeout_s", 300)))
    if completed.returncode != 0:
        raise RuntimeError(f"the ROS replay failed (exit {completed.returncode}); rerun `{' '.join(command)}` "
                           "to see why")
    return json.loads((folder / "ros.json").read_text())


def stage_report(ctx: DemoContext, folder: Path, settings: dict[str, Any]) -> dict[str, Any]:
    from kd_depth_core.demo.report import write_report

    path = write_report(ctx, folder)
    return {"report": str(path)}


def run_demo(out: str | os.PathLike, preset: str = "full", device: str = "auto", progress: bool = True,
             skip_ros: bool = False) -> Path:
    """Run (or continue) the demo; returns the report's path."""
    config_dir = find_config_dir()
    settings = load_preset(preset, config_dir)
    ctx = DemoContext(Path(out), settings, preset, config_dir, device=device, progress=progress)
    ctx.out.mkdir(parents=True, exist_ok=True)
    run_stage(ctx, "synth", stage_synth, settings["synth"])
    run_stage(ctx, "teacher", stage_train, settings["teacher"], ("synth",))
    run_stage(ctx, "baseline", stage_train, settings["baseline"], ("synth",))
    run_stage(ctx, "student", stage_student, settings["student"], ("synth", "teacher"))
    run_stage(ctx, "evaluate", stage_evaluate, settings["evaluate"], ("teacher", "student", "baseline"))
    run_stage(ctx, "export", stage_export, settings["export"], ("student",))
    if not skip_ros:
        run_stage(ctx, "ros", stage_ros, settings["ros"], ("student",))
    record = run_stage(ctx, "report", stage_report, {"preset": preset, "skip_ros": skip_ros},
                       ("evaluate", "export") + (() if skip_ros else ("ros",)))
    return Path(record["report"])
