"""Shared pytest set-up: repo root on sys.path, f32 matmuls at full precision on CPU."""
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
