"""Beam DoFns and PTransforms: read, decode, normalise, batch, predict, write."""
