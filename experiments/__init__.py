"""The latent-thought science: corpus, formats, teacher, E-step, M-step, evaluation, stage graphs."""
