"""Evaluation metrics: ReId retrieval (CMC, mAP) and image quality (SSIM, PSNR, MSE)."""
