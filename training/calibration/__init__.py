"""No-match threshold calibration: from top-1 scores (threshold) and on simulated collections (reid-calibrate)."""
