"""Load proof for the video-task service: `python -m bench --help` (see bench/README.md)."""
