"""From motion to faces: FLAME meshes (`flame`), safe model loading (`safe_pickle`),
rendered video with sound (`render`), ARKit blendshapes (`arkit`) and vertex metrics
(`vertex_metrics`). Nothing here is imported by `import dualtalk_jax`."""
