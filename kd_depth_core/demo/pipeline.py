"""The main job's core stages: the whole kd-depth flow on the built-in synthetic world, one after another.

    synth → teacher → baseline → student → evaluate → export → [extra stages] → report

Each stage writes into its own folder under the output directory and, last, a ``stage.json``
holding its settings' fingerprint and its results. A rerun reuses every finished stage whose
settings did not change, so an interrupted demo continues where it stopped. Stage settings come
from ``config/demo.yaml`` (presets ``full`` and ``fast``); training stages run the very same
configs as ``kd-depth train`` / ``kd-depth distill`` with a few ``key=value`` overrides.

Stages that need more than this package (the ROS 2 node replay) are passed in as ``extra_stages``
by the main job's composition, ``kd_depth_ros.demo.pipeline`` (`kd-depth demo`), which may depend on
both packages: kd_depth_core never imports or starts ROS.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from kd_depth_core.demo.context import DemoContext
from kd_depth_core.utils.atomic import write_text_atomic

STAGES = ("synth", "teacher", "baseline", "student", "evaluate", "export", "report")
StageBody = Callable[[DemoContext, Path, dict[str, Any]], dict[str, Any]]


def load_preset(name: str, config_dir: Path) -> dict[str, Any]:
    """The stage settings of preset ``name`` from ``config_dir``/demo.yaml."""
    presets = yaml.safe_load((config_dir / "demo.yaml").read_text())
    if name not in presets:
        raise ValueError(f"{config_dir / 'demo.yaml'}: no preset {name!r}; presets: {', '.join(presets)}")
    return presets[name]


def fingerprint(settings: Any) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def run_stage(ctx: DemoContext, stage: str, body: StageBody, settings: dict[str, Any], depends: tuple[str, ...] = ()) -> dict[str, Any]:
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
    if not ctx.progress:  # --no-progress: no tqdm bar in the training stages either
        overrides.append("train.progress=false")
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


def stage_report(ctx: DemoContext, folder: Path, settings: dict[str, Any]) -> dict[str, Any]:
    from kd_depth_core.demo.report import write_report

    path = write_report(ctx, folder)
    return {"report": str(path)}


def run_demo(out: str | os.PathLike, config_dir: Path, preset: str = "full", device: str = "auto",
             progress: bool = True, extra_stages: Sequence[tuple[str, StageBody, tuple[str, ...]]] = (),
             report_settings: dict[str, Any] | None = None) -> Path:
    """Run (or continue) the demo; returns the report's path.

    ``extra_stages``: (name, body, upstream stages) run after ``export`` with the preset's ``name``
    settings; the report depends on them. ``report_settings`` join the report stage's fingerprint.
    """
    settings = load_preset(preset, config_dir)
    ctx = DemoContext(Path(out), settings, preset, config_dir, device=device, progress=progress)
    ctx.out.mkdir(parents=True, exist_ok=True)
    run_stage(ctx, "synth", stage_synth, settings["synth"])
    run_stage(ctx, "teacher", stage_train, settings["teacher"], ("synth",))
    run_stage(ctx, "baseline", stage_train, settings["baseline"], ("synth",))
    run_stage(ctx, "student", stage_student, settings["student"], ("synth", "teacher"))
    run_stage(ctx, "evaluate", stage_evaluate, settings["evaluate"], ("teacher", "student", "baseline"))
    run_stage(ctx, "export", stage_export, settings["export"], ("student",))
    for name, body, depends in extra_stages:
        run_stage(ctx, name, body, settings[name], depends)
    record = run_stage(ctx, "report", stage_report, {"preset": preset, **(report_settings or {})},
                       ("evaluate", "export") + tuple(name for name, _, _ in extra_stages))
    return Path(record["report"])
