"""Unit tests mirror the source tree; their shared recorded data lives beside this file."""

import sys
from pathlib import Path

# sample_traces.py (traces built from recorded data) is imported by tests in every folder.
sys.path.insert(0, str(Path(__file__).parent))
