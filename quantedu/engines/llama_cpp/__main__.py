"""``python -m quantedu.engines.llama_cpp [build|status|where] [--force] [--jobs N]``."""
import sys

from .builder import main

sys.exit(main())
