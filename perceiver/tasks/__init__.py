"""Task-level functions built on the published models: optical flow, video
autoencoding, masked byte language modelling and ImageNet classification."""
