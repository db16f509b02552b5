"""Data: preprocessing into ArrayRecord shards, grain pipelines, synthetic conversations.

Modules (imported explicitly; this package imports nothing heavy):
  records     record encoding, manifest loading, the window-count formula
  preprocess  split folder -> validated shards + manifest (`experiments.preprocess`)
  pipeline    grain training/evaluation pipelines over the shards
  synthetic   synthetic DualTalk-format conversations (`experiments.synthesize`)
"""
