"""GUIDE (Seo et al., CVPR 2024): inversion, UFO target, the three losses, the unlearning loop, metrics."""
