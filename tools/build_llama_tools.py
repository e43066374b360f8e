"""Build llama.cpp's own tools (llama-server, llama-quantize, llama-imatrix, llama-perplexity) once per
machine, from the llama.cpp source inside the pinned llama-cpp-python sdist. `make llama-tools` runs this
with the course's virtualenv; see quantedu/engines/llama_cpp/ for where the build goes and how it is found.

    python tools/build_llama_tools.py            # build if missing, print the build time
    python tools/build_llama_tools.py --force    # rebuild
    python tools/build_llama_tools.py status     # where the tools are, or what to run
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the clone's quantedu, even if not installed

from quantedu.engines.llama_cpp import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
