"""guide-engine's applications, the top layer: the command line (cli.py) and the HTTP server (serve.py, its
routes serve_api.py, metrics serve_metrics.py, micro-batcher batcher.py). They import every layer below;
nothing below imports them (tests/test_architecture.py)."""
