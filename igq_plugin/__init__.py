"""IGQ-ViT: instance-aware group post-training quantization for vision transformers."""
__version__ = "0.1.0"
