r"""Converts DualTalk motion to ARKit blendshape weights in a Live Link Face CSV.

  python -m experiments.to_arkit --motion=pred.npy --mapping=mat_final.npy --output=pred_arkit.csv \
      [--mapping_names=names.txt] [--smooth=0.5] [--symmetry=0.1] [--l2=0.01] [--jaw_weight=1]

`--mapping`: your ARKit -> FLAME matrix (.npy), shape (51, 53) or (51, 103): rows = ARKit
blendshapes (Live Link Face order without TongueOut, or the order of `--mapping_names`),
columns = FLAME expression (50 or 100) then jaw axis-angle (3), flame = weights @ M
(EMAGE/BEAT2's mat_final.npy has this layout). Per frame, bounded least squares in
[0, 1] (ADMM, jitted) with optional L2, left/right symmetry and temporal smoothing
terms; head yaw/pitch/roll (radians) from the neck rotation. See docs/faces.md.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

_MOTION = flags.DEFINE_string("motion", None, "(T, 56) prediction .npy or FLAME .npz.", required=True)
_MAPPING = flags.DEFINE_string("mapping", None, "ARKit -> FLAME matrix .npy: (51, 53) or (51, 103).", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Live Link Face CSV to write.", required=True)
_MAPPING_NAMES = flags.DEFINE_string("mapping_names", None, "Text file: the ARKit name of each matrix row, one a line.")
_L2 = flags.DEFINE_float("l2", 0.0, "Weight of the L2 (ridge) term on the blendshape weights.")
_SYMMETRY = flags.DEFINE_float("symmetry", 0.0, "Weight of the (left - right)^2 term on mirrored pairs.")
_SMOOTH = flags.DEFINE_float("smooth", 0.0, "Weight of the temporal term |w_t - w_(t-1)|^2.")
_JAW_WEIGHT = flags.DEFINE_float("jaw_weight", 1.0, "Scale of the jaw (radians) residuals against the expression ones.")
_TOL = flags.DEFINE_float("tol", 2e-6, "Solver stopping tolerance.")
_MAX_ITER = flags.DEFINE_integer("max_iter", 5000, "Solver iteration limit.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from dualtalk_jax import runtime

  runtime.configure()
  from dualtalk_jax import files
  from dualtalk_jax.face import arkit

  try:
    for path, what in ((_MOTION.value, "motion (--motion)"), (_MAPPING.value, "mapping matrix (--mapping)"),
                       (_MAPPING_NAMES.value, "names file (--mapping_names)")):
      if path:
        files.require_file(path, what)
    files.prepare_output(_OUTPUT.value, "--output", (".csv",))
    r = arkit.convert_file(_MOTION.value, _MAPPING.value, _OUTPUT.value, names_path=_MAPPING_NAMES.value,
                           l2=_L2.value, symmetry=_SYMMETRY.value, smooth=_SMOOTH.value, jaw_weight=_JAW_WEIGHT.value,
                           tol=_TOL.value, max_iter=_MAX_ITER.value)
  except (OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  info = r["info"]
  if not r["converged"]:
    print(f"warning: the solver stopped at --max_iter={_MAX_ITER.value} (step {info.step:.2g} > --tol)", file=sys.stderr)
  print(f"wrote {os.path.abspath(r['output'])}: {r['frames']} frames x {r['blendshapes']} blendshapes "
        f"(fit RMS error {info.rms_error:.4g}, {info.iterations} iterations, {r['solve_seconds']:.2f} s)")


if __name__ == "__main__":
  app.run(main)
