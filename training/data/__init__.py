"""Training data: data-set readers, P x K sampler, synthetic players, image transforms."""
