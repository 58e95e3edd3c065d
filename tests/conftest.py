"""Test-wide settings: a private augmented-model cache, so tests never touch ~/.cache/nxrt."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("NXRT_CACHE", tempfile.mkdtemp(prefix="nxrt-test-cache-"))
