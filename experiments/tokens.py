"""The four special tokens of the thought-augmented format (docs/method.md "Data format")."""

SOL = "<|START_OF_LATENT|>"
EOL = "<|END_OF_LATENT|>"
PRIOR = "<|PRIOR_PREFIX|>"
POSTERIOR = "<|POSTERIOR_PREFIX|>"
LATENT_TOKENS = [SOL, EOL, PRIOR, POSTERIOR]

BOS = "<|bos|>"
EOS = "<|eos|>"
PAD = "<|pad|>"
