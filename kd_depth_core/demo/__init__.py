"""The main job (`kd-depth demo` / `make demo`): the whole pipeline on the built-in synthetic world."""
