"""Classical stereo (no learning): OpenCV SGBM proxies and baseline."""
