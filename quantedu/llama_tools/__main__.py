"""``python -m quantedu.llama_tools [build|status|where] [--force] [--jobs N]``."""
import sys

from .builder import main

sys.exit(main())
