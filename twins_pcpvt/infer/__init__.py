"""Inference with ais_bench's flags and outputs: in this process (`--engine local`) or as a Ray job (`--engine
ray`). The modules, lowest first: inputs, outputs, record, devices, flags, local; ray_cluster, ray_plan,
ray_stages, ray_engine. Nothing is imported here, so that each engine loads only what it uses."""
