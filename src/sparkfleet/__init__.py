"""sparkfleet: provision NVIDIA DGX Spark hosts to serve one large model with vLLM."""

__version__ = "0.1.0"
