"""Defaults and limits that the library and its command line share.

Plain values and no imports: the command line shows them in ``--help`` (and checks its arguments against them)
without loading torch, and the library modules that apply them import them from here.
"""

DEFAULT_MODEL = "efficientnetv2_rw_m.agc_in1k"

# Square input sizes: the network downsamples by 32, and one 4096×4096 image already needs gigabytes of activations.
MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 4096

DEFAULT_CALIBRATION_IMAGES = 64  # int8: read at most this many calibration images unless told otherwise

EXPORT_FORMATS = ("onnx", "torchscript", "exported-program")
DEFAULT_ONNX_OPSET = 17

# explain --method: the name on the command line → TorchCAM's class name.
CAM_METHODS = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMpp",
    "smoothgradcam++": "SmoothGradCAMpp",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "scorecam": "ScoreCAM",
}

# Sharded output folders of embed and features.
SHARD_SIZE = 4096  # images per shard by default, unless their outputs would pass SHARD_BYTES
SHARD_BYTES = 1 << 30  # a default shard's tensors stay under about 1 GiB (feature maps at 416 px: ~9.6 MB a row)

# A training run folder's resume state.
STATE_FILE = "last_state.pt"
