"""Ray Serve applications for reward models (installed as fgrlhf_ray.serve)."""
