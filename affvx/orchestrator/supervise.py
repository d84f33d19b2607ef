"""`python -m affvx.orchestrator.supervise RUN [MAX_PARALLEL]`: drive a run in the background
(what `affvx launch --detach` starts for the local backend)."""

import sys
from pathlib import Path

from affvx.orchestrator.launch import supervise

if __name__ == "__main__":
    limit = int(sys.argv[2]) if len(sys.argv) > 2 else None
    sys.exit(supervise(Path(sys.argv[1]), limit))
