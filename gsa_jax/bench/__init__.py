"""The benchmark of gsa-jax: `python -m gsa_jax.bench` (see __main__.py); timing (the timing library), runner
(what is measured, for any registered model through the contract) and report (tables and plots)."""
