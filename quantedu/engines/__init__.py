"""The engines the course measures against, each run the way its users run it.

* :mod:`.server` (the lifecycle every server shares: start, readiness, guaranteed stop) and :mod:`.load`
  (the client that streams requests at it and measures TTFT and tokens/s); :mod:`.procs` (ports, logs, the
  parent-death signal); :mod:`.sidecar` (one way to run a worker in another Python environment);
* :mod:`.llama_cpp`: llama.cpp's tools, its two servers, llama-cpp-python and ggml's C reference;
* :mod:`.vllm` (vLLM in its own environment, ``.venv-vllm``) and :mod:`.vllm_probe` (which of the course's
  checkpoint formats it serves here, measured);
* :mod:`.llm_compressor` (the maintained GPTQ/AWQ library the course checks itself against) and
  :mod:`.seed_libs` (the seed post's own libraries, in ``.venv-seed``);
* :mod:`.doctor`: what this machine can run (``quantedu doctor``).
"""
