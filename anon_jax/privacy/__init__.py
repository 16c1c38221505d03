"""Image privacy transforms for person Re-ID: classical desensitisation (mosaic, blur, noise)."""
