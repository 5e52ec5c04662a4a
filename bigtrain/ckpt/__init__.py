"""Checkpoint I/O: HF safetensors directories written shard by shard, atomically; readers for the
formats bigtrain accepts (HF dir, bigtrain run dir, DeepSpeed ZeRO-3 dir) that yield tensors lazily."""
