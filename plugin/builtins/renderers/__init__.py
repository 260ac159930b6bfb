"""Built-in renderer plugins: ``puppet`` (a stylised face from the motion-space parameters) and
``motion_autoencoder`` (the official model's decoder, 512² frames from motion latents)."""
