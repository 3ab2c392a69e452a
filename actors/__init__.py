"""Thin @ray.remote shells around fgrlhf_ray classes (installed as fgrlhf_ray.actors)."""
