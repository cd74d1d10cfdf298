"""FastAPI re-identification service: gallery registration and crop queries over a FAISS index.

REID_CHECKPOINT=artifacts/demo.safetensors reid-serve --port 8000
"""

import logging

logger = logging.getLogger(__name__)
