r"""DualTalk training recipes. Variants: `large` (the released recipe), `base`.

  python -m experiments.train --config=experiments/configs/dualtalk.py:large --workdir=... \
      --config.data.train_dir=<preprocessed train> --config.data.val_dir=<preprocessed test> \
      --config.pretrained_wav2vec2=<local facebook/wav2vec2-large-960h-lv60-self>

Released recipe: Adam lr 1e-4, x0.8 every 50 epochs, batch 32, 200-frame windows, frozen
conv feature extractors, the wav2vec2 dropouts/SpecAugment/LayerDrop of its config,
dropout 0.1 in the transformer layers and 0.5 after the interaction self-attention.
`steps_per_epoch` turns epochs into steps: set it to your split's
`samples_per_epoch / batch_size` (the full DualTalk train split: about 3,300 steps).

Frozen wav2vec2 (not the released recipe, off by default): `optim.freeze_wav2vec2=True`
runs both encoders in eval mode without gradients or optimizer state;
`data.feature_cache=True` (implies it) reads their outputs from the train data's feature
cache (`experiments.preprocess --cache_wav2vec2=<the weights the run starts from>`)
instead of running wav2vec2, and refuses a cache made with other weights.
"""

import ml_collections


def get_config(arg: str = "large") -> ml_collections.ConfigDict:
  if arg not in ("large", "base"):
    raise ValueError(f"unknown variant {arg!r}: use dualtalk.py:large or dualtalk.py:base")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = arg
  c.wav2vec2_config = ""  # a HF config.json replacing the model's wav2vec2 part
  c.pretrained_wav2vec2 = ""  # a local HF wav2vec2 directory loaded into both encoders
  c.init_checkpoint = ""  # a converted DualTalk checkpoint to start from
  c.compute_dtype = "float32"  # or "bfloat16" (f32 master weights)
  c.remat = ""  # "" or a jax.checkpoint policy name for the wav2vec2/transformer layers
  # "" (released) or one of the paper's Tab. 6 ablations: no_partner_speech, no_partner_motion,
  # mfcc, no_temporal_enhancer, no_interaction, no_modulation (dualtalk_jax/models/dualtalk.py)
  c.ablation = ""
  c.interaction_residual = False  # not released: residual around the interaction self-attention
  c.scan_layers = True  # wav2vec2 layers stacked and scanned; False = unrolled (debugging; another param layout)

  c.steps_per_epoch = 3300
  c.num_epochs = 100
  c.total_steps = c.get_ref("steps_per_epoch") * c.get_ref("num_epochs")
  c.batch_size = 32  # global, over all processes
  c.grad_accum = 1
  c.checkpoint_every = 2000
  c.keep_checkpoints = 3
  c.log_every = 50
  c.eval_every = 10000
  c.progress_bar = True

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 1e-4
  c.optim.decay_rate = 0.8
  c.optim.decay_steps = c.get_ref("steps_per_epoch") * 50
  c.optim.grad_clip_norm = 0.0
  c.optim.freeze_feature_extractor = True
  c.optim.freeze_wav2vec2 = False  # frozen wav2vec2 mode: both encoders in eval mode, no gradient, no moments

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.num_devices = 0  # 0 = all devices; else the first n (tests, debugging)

  c.data = ml_collections.ConfigDict()
  c.data.train_dir = ""
  c.data.val_dir = ""
  c.data.window_frames = 200
  c.data.num_shards = 0  # data shards, each read by one process (0 = one per process); fixes the batches across host counts
  c.data.worker_count = 0
  c.data.thread_count = 2
  c.data.prefetch = 2
  c.data.clips_per_block = 16
  c.data.feature_cache = False  # read cached wav2vec2 features instead of audio (implies optim.freeze_wav2vec2)
  c.data.eval_batch_size = 8
  c.data.eval_bucket_frames = 250

  c.synthetic = ml_collections.ConfigDict()
  c.synthetic.enabled = False
  return c
