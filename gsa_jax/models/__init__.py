"""The model families of gsa-jax, one folder each; `gsa_jax.registry` finds them by `config.model.name`."""
