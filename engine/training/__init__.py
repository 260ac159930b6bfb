"""Training the flow transformer: dataset format, diffusion-forcing flow matching, Diffusion-DPO
preference optimisation, evaluation metrics (see docs/training.md)."""
