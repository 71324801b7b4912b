"""The offline demo: a synthetic shapes world (`world`) and a tiny VLM built and supervised on it (`build`)."""
