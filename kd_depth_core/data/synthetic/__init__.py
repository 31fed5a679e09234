"""Procedural synthetic world with exact ground truth: seeded street and indoor scenes rendered by
analytic ray casting (stereo RGB, metric depth, semantics, poses) and written as training sequences.

Modules: `world` (boxes, lights, classes), `textures`, `render`, `trajectory`, `presets`,
`generate` (sequences and dataset roots), `cli` (`kd-depth synth`).
"""
