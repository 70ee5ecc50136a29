"""Evaluating generated videos: prompt fidelity (CLIP), temporal consistency (CLIP and SSIM between
adjacent frames) and closeness to a reference style (distances between CLIP embedding sets)."""
