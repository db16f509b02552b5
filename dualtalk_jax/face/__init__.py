"""From motion to faces (docs/faces.md). Modules, imported explicitly:

  safe_pickle     loads FLAME's pickles (chumpy ones too) admitting only arrays; no code runs
  flame           FLAME 2020 loading and the batched, jitted JAX forward
  render          side-by-side video with both voices (moderngl/EGL, PyAV)  (`experiments.render`)
  arkit           ARKit blendshapes by bounded least squares -> Live Link Face CSV  (`experiments.to_arkit`)
  vertex_metrics  LVE and FDD on FLAME meshes  (`experiments.evaluate --flame_model`)
  synthetic       a stand-in with FLAME's array shapes, for tests and benchmarks
"""
