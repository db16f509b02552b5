"""PyTorch module tree of the released DualTalk model, written by us from the spec.

The parity oracle of our tests and the target of checkpoint export; see ../README.md.
"""

from .model import (
    CrossModalTemporalEnhancer,
    DualSpeakerInteractionModule,
    DualSpeakerJointEncoder,
    DualTalk,
    ExpressiveSynthesisModule,
    compute_loss,
    num_output_frames,
)
from .wav2vec import (
    Wav2Vec2Model,
    linear_interpolation,
    wav2vec2_base_960h_config,
    wav2vec2_large_lv60_config,
)

__all__ = [
    "CrossModalTemporalEnhancer",
    "DualSpeakerInteractionModule",
    "DualSpeakerJointEncoder",
    "DualTalk",
    "ExpressiveSynthesisModule",
    "Wav2Vec2Model",
    "compute_loss",
    "linear_interpolation",
    "num_output_frames",
    "wav2vec2_base_960h_config",
    "wav2vec2_large_lv60_config",
]
