"""Sharded, resumable storage of generations."""

from diffaudit.store.fill import fill_shard, fill_store
from diffaudit.store.read import read_samples, sampler_classes, sampler_kind, samples_identity
from diffaudit.store.sample_store import SampleStore, generation_id

__all__ = ["SampleStore", "fill_shard", "fill_store", "generation_id", "read_samples", "sampler_classes", "sampler_kind", "samples_identity"]
